"""Issues #13 and #31: each command's own options and inputs, given bad values (see test_bad_input.py).

Pictures (--image, --mask, the IMAGE of invert and noise, lab --data) are given missing, as a folder, as a file
that is not a picture and as a PNG whose header claims 30000x30000 pixels; trace files missing, as a folder or as
a file that is not a trace; lists, pixels, layers, steps and fractions out of range or unreadable; the model
options also where no model is loaded (noise in pixel space, attention on a saved trace); the studio's address
(never served: the harness makes the server fail), the tour's folder and train-preview's model folder.
"""

import pytest

from tests.bad_input import (
    BASES,
    CHOICES,
    EMBEDDINGS,
    FLOATS,
    FRAME_MS,
    GENERATION,
    INTS,
    MODEL,
    PICTURES,
    PROMPTS,
    THREADS,
    TRACE,
    TRACES,
    Table,
    check_refused,
)

FRACTIONS = [*FLOATS, "1.5"]
# A bad value of each model option, for runs that load no model: refused all the same (ModelChoice.check_given,
# read_config).
UNLOADED_MODEL_OPTIONS = {"--model": "missing-model", "--device": "tpu", "--dtype": "fp64", "--weights": "both",
                          "--config": "sd3", "--prediction-type": "nope"}
INT_LISTS = ["0", "-1", "abc", "", "1,,2", "100000"]


def _generation(cases: Table) -> None:
    """denoise and trace (the picture inputs), cfg-sweep and compare."""
    for name in ("denoise", "trace"):
        base = BASES[name]
        with_image = ("--image", "picture.png")
        cases.add(base, "--image", PICTURES)
        cases.add(base, "--mask", [*PICTURES, "small.png"], *with_image)
        cases.add(base, "--mask", ["picture.png"])  # a mask without --image
        cases.add(base, "--strength", [*FLOATS, "0", "2"], *with_image)
        cases.add(base, "--strength", ["0.5"], *with_image, "--t", "500")  # both say how far to noise
        cases.add(base, "--t", ["-1", "1000", "abc", "0"], *with_image)
    cfg = ["cfg-sweep", *GENERATION]
    cases.add(cfg, "--scales", ["nan", "inf", "-inf", "1e400", "-1", "abc", "", "1,,nan"])
    cases.add(cfg, "--rows-steps", ["0", "abc", "", "999999"])
    compare = ["compare", *GENERATION]
    cases.add(compare, "--x", ["guidance=nan,1", "guidance=inf", "guidance=1e400", "guidance=-1", "karras=maybe",
                               "steps=a,b", "steps=0", "steps=", "", "bogus=1", "seed=-1", "sampler=nope"])
    cases.add(compare, "--y", ["sampler=ddim", "steps=0", "bogus=1", "=1"], "--x", "sampler=ddim,euler")
    # the LoRA axes: without a --lora to vary; values not a scale within ±4, or not a section of the U-Net
    cases.add(compare, "--x", ["lora=0,1", "lora-blocks=all,in"])
    cases.add(compare, "--y", ["lora=0,1"], "--x", "sampler=ddim,euler")
    cases.add(compare, "--x", ["lora=nan", "lora=9", "lora=abc", "lora=", "lora-blocks=down", "lora-blocks="],
              "--lora", "tinylora.safetensors")
    cases.add(compare, "--y", ["lora-blocks=nope", "lora=-inf"], "--lora", "tinylora.safetensors", "--x", "lora=0,1")


def _explorers(cases: Table) -> None:
    """attention, edit, predict, paths and invert; the file arguments of render, report and tokens."""
    attention = BASES["attention"]
    cases.add(["attention", *GENERATION], "--trace", TRACES)
    cases.add(["attention", *GENERATION], "--trace", ["notatrace.safetensors"], "--prompt", "a red circle")
    cases.add(["attention"], "--trace", ["notatrace.safetensors"], "--heads")  # --heads records in a new run
    for option, value in UNLOADED_MODEL_OPTIONS.items():  # no model is loaded to draw a saved trace
        cases.add(["attention"], option, [value], "--trace", TRACE)
    cases.add(attention, "--layer", ["nope", "99", "-1", ""])
    cases.add(attention, "--step", ["0", "-1", "abc", "3"])
    cases.add(attention, "--pixel", ["abc", "1", "-1,0", "32,0", "0,32", "1,2,3", "", "1.5,2"])
    edit = ["edit", "--prompt", "a red circle", *GENERATION]
    cases.add(edit, "--to", PROMPTS)
    cases.add(edit, "--tau", FRACTIONS)
    cases.add(edit, "--self-tau", FRACTIONS)
    cases.add(edit, "--reweight", ["red", "red=abc", "red=nan", "red=inf", "red=-1", "=2", "red=2,,circle=2",
                                   "blue=2", "red=1e400"])
    cases.add(BASES["predict"], "--step", ["0", "-1", "abc", "3", "", "99999"])
    paths = ["paths", "--samplers", "ddim", "--reference", "ddim:3", "--size", "32", "--device", "cpu"]
    cases.add(paths, "--samplers", ["nope", "", ",", "ddim,DDIM"])
    cases.add(paths, "--samplers", ["ddim,euler"], "--karras")  # Karras σ apply to σ samplers only
    cases.add(paths, "--steps", INT_LISTS)
    cases.add(paths, "--reference", ["nope", "ddim", "ddim:0", "ddim:abc", "nope:10", "euler_a:10", "", "ddim:100000"])
    invert = ["invert", "picture.png", *GENERATION]
    cases.argument("invert", "IMAGE", PICTURES, "--no-sweep", *GENERATION)
    cases.add(invert, "--sweep-steps", INT_LISTS)
    cases.add(invert, "--sweep-guidance", ["nan", "inf", "-1", "abc", "", "1,,3", "1e400"])
    cases.argument("render", "TRACE_FILE", TRACES)
    cases.argument("report", "TRACE_FILES", TRACES, "--html", "r.html")
    cases.argument("tokens", "PROMPT", PROMPTS[1:])
    cases.add(["tokens", "a red circle"], "--embedding", [e for e in EMBEDDINGS if e != "wideemb.safetensors"])
    # lora's FILE[:SCALE]: no file, a folder, not a LoRA's suffix, not a checkpoint, a bad scale, keys of no layer
    cases.argument("lora", "FILE", ["missing.safetensors", "afolder", "afile", "picture.png", "afile.pt",
                                    "notatrace.safetensors", "tinylora.safetensors:nan", "tinylora.safetensors:9",
                                    "wideemb.safetensors", ""])
    # --attention's run: a prompt that is not one, or without --attention; a word the prompt does not hold
    attention = [*BASES["lora"], "--attention", "a.png"]
    cases.add(attention, "--prompt", [""])  # the shared table has the other bad prompts
    cases.add(BASES["lora"], "--prompt", ["a red circle"])  # without --attention
    cases.add([*attention, "--prompt", "a red circle"], "--word", ["square", "", "   ", "a red circle blue"])
    finetune = BASES["finetune"]
    # --concept: no folder, a folder without pictures, a file, an object without fill or colour, two objects, none
    cases.add(finetune, "--concept", ["missing", "afolder", "afile", "world:red circle", "world:pink dotted",
                                      "world:a red striped circle and a blue solid square", "world:", ""])
    cases.add(finetune, "--token", ["", "a b", "zig", "<zïg>"])
    cases.add(finetune, "--out", ["loss.safetensors", "before_after.safetensors", "attention.safetensors"])  # its
    # companion <out>_loss.png, … exists
    cases.add(finetune, "--method", CHOICES)
    cases.add(finetune, "--rank", ["0", "-1", "65", "abc", ""])
    cases.add(finetune, "--lr", [*FLOATS, "0", "2"])
    cases.add(finetune, "--judge", ["-1", "1001", "abc", ""])


def _noise_and_lab(cases: Table) -> None:
    """noise (a picture, no model unless --latent) and lab (2-D points, no model)."""
    noise = BASES["noise"]
    cases.argument("noise", "IMAGE", PICTURES)
    cases.argument("noise", "IMAGE", PICTURES[:2], "--latent", "--model", MODEL, "--device", "cpu")
    cases.add(noise, "--timesteps", ["-1", "1000", "abc", "", "1,,2"])
    cases.add(noise, "--schedules", ["", "bogus", ","])
    cases.add(noise, "--size", ["0", "-32", "abc", "", "1000000"])
    cases.add(noise, "--size", ["33", "8192"], "--latent", "--model", MODEL, "--device", "cpu")  # the VAE's sizes
    cases.add(noise, "--seed", INTS)
    cases.add(noise, "--sampler", CHOICES)
    with_sampler = ("--sampler", "ddim")
    cases.add(noise, "--steps", ["0", "-1", "abc", "", "100000"], *with_sampler)
    cases.add(noise, "--spacing", CHOICES, *with_sampler)
    cases.add(noise, "--sampler", ["ddim"], "--karras")  # Karras σ apply to σ samplers only
    for option, value in UNLOADED_MODEL_OPTIONS.items():  # pixel space reads the model's scheduler, not its weights
        cases.add(noise, option, [value], *with_sampler)
    lab = ["lab"]
    cases.add(lab, "--data", ["nope", "black.png", *PICTURES])  # black: no density
    cases.add(lab, "--samplers", ["nope", "", ",", "ddim,ddim"])
    cases.add(lab, "--steps", ["0", "-1", "201", "abc", ""])
    cases.add(lab, "--schedule", CHOICES)
    cases.add(lab, "--guidance", ["nan", "inf", "-1", "1e400", "abc", "", "1,,2", "1000"], "--out", "lab.png")
    cases.add(lab, "--guidance", ["1,2"])  # --guidance draws <out>_guidance.png: without --out it is lost
    cases.add(lab, "--train-steps", ["0", "-1", "abc", "", "99999999999"])
    cases.add(lab, "--particles", ["0", "1", "-1", "100001", "abc", ""])
    cases.add(lab, "--seed", INTS)
    cases.add(lab, "--frame-ms", FRAME_MS)
    cases.add(lab, "--threads", THREADS)
    cases.add(lab, "--objective", CHOICES)
    cases.add(lab, "--shift", [*FLOATS, "0"], "--objective", "flow")
    cases.add(lab, "--shift", ["3"])  # the flow model's, not diffusion's
    cases.add(lab, "--lessons", ["nope", "", ",", "variance,variance", "classifier,nope"], "--out", "lab.png")
    cases.add(lab, "--lessons", ["classifier"])  # <out>_classifier.png: without --out it is lost
    cases.add(lab, "--lessons", ["variance"], "--objective", "flow", "--out", "lab.png")  # diffusion's figures
    cases.add(lab, "--lessons", ["classifier"], "--data", "picture.png", "--out", "lab.png")  # one class
    cases.add(lab, "--lessons", ["variance"], "--out", "variance.png")  # variance_variance.png exists


def _studio_tour_and_train_preview(cases: Table) -> None:
    """studio's address (checked before the model loads), the tour's folder and train-preview's inputs."""
    studio = BASES["studio"]
    cases.add(studio, "--port", ["0", "70000", "-1", "abc", ""])
    # An unknown name, an empty one, and an address of another machine (it cannot be bound here).
    cases.add(studio, "--host", ["no-such-host.invalid", "", "8.8.8.8"])
    cases.argument("tour", "OUT_DIR", ["afile", "afile/tour", "oldtour"], "--quick")  # a file; under one; a tour
    small = ("--runs", "1", "--steps", "1")
    preview = ["train-preview", MODEL, *small]  # valid: it would sample the tiny model (made to fail)
    cases.argument("train-preview", "MODEL_DIR", ["missing-model", "afolder", "afile", ""], *small)
    cases.add(preview, "--world", CHOICES)
    for option in ("--runs", "--steps"):
        cases.add(preview, option, ["0", "-1", "abc", "", "100001"])
    cases.add(preview, "--seed", INTS)
    cases.add(preview, "--widths", ["", "0", "-1", "abc", "1,,2", "2000", "8,8,8,8,8,8,8"])  # 7: not the VAE's ×2s
    cases.add(preview, "--threads", THREADS)


def _cases() -> Table:
    cases = Table()
    _generation(cases)
    _explorers(cases)
    _noise_and_lab(cases)
    _studio_tour_and_train_preview(cases)
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[case.label for case in CASES])
def test_bad_command_option_is_refused_in_one_line(case, tmp_path, monkeypatch, tiny_model_dir, tiny_trace_file):
    check_refused(case, tmp_path, monkeypatch, tiny_model_dir, tiny_trace_file)
