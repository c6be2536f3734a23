"""The routing vocabulary, free of torch so that settings.py can validate against it."""

# How the layers between two exits run at inference.
SEQUENCE = "sequence"  # whole sequences, every token (the spec's evaluation)
TOKEN = "token"  # each deep token's state alone, as a sequence of length 1
PROPAGATED = "propagated"  # whole sequences; exited tokens keep their exit state
MODES = (SEQUENCE, TOKEN, PROPAGATED)

# What an exit decides on: max-softmax confidence, or a linear exit classifier's score.
SOFTMAX, CLASSIFIER = "softmax", "classifier"
SIGNALS = (SOFTMAX, CLASSIFIER)

# evaluation.inference: the spec's SEQUENCE everywhere, or each stage's layers as trained.
SPEC, AS_TRAINED = "spec", "as_trained"
INFERENCES = (SPEC, AS_TRAINED)

# run.precision: everything in float32, or matrix products and activations in bfloat16.
FP32, BF16 = "fp32", "bf16"
PRECISIONS = (FP32, BF16)
