"""The routing vocabulary, free of torch so that settings.py can validate against it."""

# How the layers between two exits run at inference.
SEQUENCE = "sequence"  # whole sequences, every token (the spec's evaluation)
TOKEN = "token"  # each deep token's state alone, as a sequence of length 1
PROPAGATED = "propagated"  # whole sequences; exited tokens keep their exit state
MODES = (SEQUENCE, TOKEN, PROPAGATED)

# Exit signals named elsewhere (the default's and the trained one); all: exit_signals.SIGNALS.
SOFTMAX, CLASSIFIER = "softmax", "classifier"

# evaluation.inference: the spec's SEQUENCE everywhere, or each stage's layers as trained.
SPEC, AS_TRAINED = "spec", "as_trained"
INFERENCES = (SPEC, AS_TRAINED)

# run.precision: everything in float32, or matrix products and activations in bfloat16.
FP32, BF16 = "fp32", "bf16"
PRECISIONS = (FP32, BF16)
