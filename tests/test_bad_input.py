"""Issues #13 and #31: no command can be made to write garbage, crash with a traceback or destroy a file.

Table-driven, in three files: the options many commands share (here: sampling, model and view options, each with
its classes of bad value — NaN, ±inf, negative, zero, huge, non-numeric, empty, unknown names, unusable devices,
prompts of spaces or 10,000 characters — on every command that takes it), each command's own options and inputs
(test_bad_input_commands.py) and the outputs (test_bad_input_outputs.py: existing files, folders, suffixes,
two outputs on one file). Each case must exit 2 with exactly one short `error:` line, before any work, and leave
every file in the working folder as it was (tests/bad_input.py). The coverage test below holds the tables to
every option of every command.
"""

import pytest

from tests.bad_input import (
    BASES,
    CHOICES,
    CONFIGS,
    DEVICES,
    DTYPES,
    EMBEDDINGS,
    FLOATS,
    FRAME_MS,
    INTS,
    LORAS,
    MODEL,
    MODELS,
    PROMPTS,
    SIZES,
    STEPS,
    THREADS,
    WEIGHTS,
    Table,
    check_refused,
    commands,
    options_of,
)
from tests.embedded.test_train_inputs import CASES as TRAIN_CASES
from tests.test_bad_input_commands import CASES as COMMAND_CASES
from tests.test_bad_input_outputs import CASES as OUTPUT_CASES

# noise loads the model it is given (here with --latent, where it matters), render only for some traces.
SHARED_BASES = {**BASES, "noise": [*BASES["noise"], "--latent", "--model", MODEL, "--size", "32", "--device", "cpu"],
                "render": [*BASES["render"], "--device", "cpu"]}
SHARED = {
    "--prompt": PROMPTS, "--negative-prompt": PROMPTS, "--steps": STEPS, "--size": SIZES, "--seed": INTS,
    "--guidance": FLOATS, "--guidance-rescale": [*FLOATS, "1.5"], "--sampler": CHOICES, "--schedule": CHOICES,
    "--spacing": CHOICES, "--model": MODELS, "--device": DEVICES, "--dtype": DTYPES, "--weights": WEIGHTS,
    "--config": CONFIGS, "--prediction-type": CHOICES, "--preview": CHOICES, "--attn-scale": CHOICES,
    "--frame-ms": FRAME_MS, "--threads": THREADS, "--lora": LORAS,
    "--embedding": EMBEDDINGS,
}
# Options of these names that mean something else in a command, or need another base: in its own table.
OWN = {("paths", "--steps"), ("noise", "--steps"), ("noise", "--sampler"), ("noise", "--spacing"),
       ("noise", "--size"), ("noise", "--seed")}


def _cases() -> Table:
    cases = Table()
    for command, base in SHARED_BASES.items():
        options = options_of(command)
        for option, values in SHARED.items():
            if option in options and (command, option) not in OWN:
                cases.add(base, option, values)
        if "--karras" in options and "--sampler" in options and (command, "--sampler") not in OWN:
            cases.add(base, "--sampler", ["ddim"], "--karras")  # Karras σ apply to σ samplers only
    return cases


CASES = _cases()

# Options (flags aside: they take no value) that no case gives a bad value, and why.
EXEMPT: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_bad_shared_option_is_refused_in_one_line(case, tmp_path, monkeypatch, tiny_model_dir, tiny_trace_file):
    check_refused(case, tmp_path, monkeypatch, tiny_model_dir, tiny_trace_file)


def test_every_option_of_every_command_has_a_bad_value_case():
    covered = {(case.command, case.option) for case in [*CASES, *COMMAND_CASES, *OUTPUT_CASES]}
    covered |= {("train", args[0]) for _, args, _ in TRAIN_CASES}
    missing = [f"{command} {option}" for command in commands() for option, flag in options_of(command).items()
               if not flag and (command, option) not in covered and (command, option) not in EXEMPT]
    assert not missing, f"options without a bad-value case: {', '.join(missing)}"


def test_the_tables_are_large_and_their_cases_named_apart():
    assert len(CASES) >= 600 and len(COMMAND_CASES) >= 150 and len(OUTPUT_CASES) >= 150
    labels = [case.label for case in [*CASES, *COMMAND_CASES, *OUTPUT_CASES]]
    assert len(set(labels)) == len(labels), sorted({label for label in labels if labels.count(label) > 1})
