"""Every call the pipeline makes into routing, mining, sweep, costs and stages: one line each,
with the arguments the pipeline has always passed, so that a change of those modules'
signatures is made here and nowhere else in the pipeline."""
from __future__ import annotations

from .costs import CostModel, inference_modes
from .mining import HardTokens, examples_in_context, exit_pass, histogram, mine, top_words
from .routing import evaluate
from .stages import HardTokenTask, MaskedSequenceTask, SequenceTask, run_stage
from .sweep import single_point, sweep, train_classifiers


# -- routing ----------------------------------------------------------------------------------
def routed_evaluation(model, batches, exit_layers, thresholds, check, modes=None):
    return evaluate(model, batches, exit_layers, thresholds, check=check, modes=modes)


# -- mining -----------------------------------------------------------------------------------
def pass_to_exit(model, batches, exit_layer, check, earlier_exits, earlier_thresholds, modes):
    return exit_pass(model, batches, exit_layer, check, earlier_exits, earlier_thresholds,
                     modes)


def mine_hard_tokens(passed, targets, ratio, exit_layer):
    return mine(passed, targets, ratio, exit_layer)


def confidence_histogram(confidences, bins):
    return histogram(confidences, bins)


def hard_top_words(targets, vocab, k):
    return top_words(targets, vocab, k)


def hard_examples(hard, batches, vocab, k):
    return examples_in_context(hard, batches, vocab, k)


def hard_tokens(hidden, targets, confidences, positions):
    return HardTokens(hidden, targets, confidences, positions)


# -- costs ------------------------------------------------------------------------------------
def modes_after_exits(stages, inference):
    return inference_modes(stages, inference)


def cost_model(cfg, vocab_size, seq_len, exit_layers, modes):
    return CostModel(cfg, vocab_size, seq_len, exit_layers, modes)


# -- stages -----------------------------------------------------------------------------------
def sequence_task(model, train, validation, exit_layers, thresholds):
    return SequenceTask(model, train, validation, exit_layers, thresholds)


def masked_sequence_task(model, lower, mask, source, validation, exit_layers, thresholds,
                         hard_from_layer, modes):
    return MaskedSequenceTask(model, lower, mask, source, validation, exit_layers, thresholds,
                              hard_from_layer=hard_from_layer, modes=modes)


def hard_token_task(model, tokens, order, batch_size, validation, exit_layers, thresholds,
                    hard_from_layer, modes):
    return HardTokenTask(model, tokens, order, batch_size, validation, exit_layers,
                         thresholds, hard_from_layer=hard_from_layer, modes=modes)


def train_stage(number, task, stage, optimizer, control, emit, progress_events, on_improved,
                on_epoch_end, resume):
    return run_stage(number, task, stage, optimizer, control, emit, progress_events,
                     on_improved=on_improved, on_epoch_end=on_epoch_end, resume=resume)


# -- sweep ------------------------------------------------------------------------------------
def exit_classifiers(model, mining, exit_layers, thresholds, modes, seed, check):
    return train_classifiers(model, mining, exit_layers, thresholds, modes, seed, check)


def threshold_sweep(model, mining, report, exit_layers, modes, signals, points, classifiers,
                    check):
    return sweep(model, mining, report, exit_layers, modes, signals, points, classifiers,
                 check)


def one_point_series(name, evaluation, costs, plain, deepest):
    return single_point(name, evaluation, costs, plain, deepest)
