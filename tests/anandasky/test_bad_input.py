"""AnandaSky inference.py, eval_ocr.py and eval_accuracy.py on bad input: each refusal is one `error:` line, exit 2,
and (except the Python-API check) happens BEFORE the model loads: AnandaSkyOCR is replaced by a loader that fails the
test if it is called. Covered: prompts past the model's context (the limit read from config.json, never typed),
--max_new_tokens past it, decompression-bomb images, non-UTF-8 prompts, unwritable or colliding outputs, labels.tsv
with a non-image, a 200 KB field, a BOM or nothing in it, and an error after the progress bar started."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from tests.support import ANANDASKY_FOLDER, REPO_ROOT, load_script

CHECKPOINT: Path | None = None  # the session's AnandaSky test checkpoint (its config says 40960 positions), set below
UW3 = REPO_ROOT.parent / "shared" / "data" / "ocr" / "uw3_500"
LINES = ["images/0005_010001.bin.png", "images/0011_010111.bin.png"]
LONG_PROMPT = "word " * 20_000  # ~60k tokens with the test tokenizer: past 40960


@pytest.fixture(autouse=True)
def _checkpoint(anandasky_checkpoint):
    """The checkpoint folder is built by conftest (it is not committed: .gitignore), once per session."""
    global CHECKPOINT
    CHECKPOINT = anandasky_checkpoint


def png_declaring(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header declares width x height pixels (a decompression bomb when that is huge)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def never_load(module, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(module, "AnandaSkyOCR", refuse)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.split("\n") if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture
def inference(monkeypatch):
    module = load_script(ANANDASKY_FOLDER, "inference")
    never_load(module, monkeypatch)
    return module


@pytest.fixture
def E(monkeypatch):
    module = load_script(ANANDASKY_FOLDER, "eval_ocr")
    never_load(module, monkeypatch)
    return module


@pytest.fixture
def files(tmp_path) -> Path:
    (tmp_path / "bomb.png").write_bytes(png_declaring(100_000, 100_000))  # PIL's DecompressionBombError
    (tmp_path / "big.png").write_bytes(png_declaring(10_000, 10_000))  # past the cap, only a warning in PIL
    (tmp_path / "notes.png").write_text("not a picture")
    return tmp_path


def labels(folder: Path, rows: list[str], text: str | None = None) -> Path:
    """A data folder whose labels.tsv lists `rows` (image paths: absolute, or relative to `folder`)."""
    folder.mkdir(exist_ok=True)
    body = text if text is not None else "image\ttext\n" + "".join(f"{row}\tsome text\n" for row in rows)
    (folder / "labels.tsv").write_text(body, encoding="utf-8")
    return folder


def uw3_lines(tmp_path: Path) -> Path:
    return labels(tmp_path / "lines", [str(UW3 / line) for line in LINES])


# --- inference.py ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, messages", [
    (["--prompt", LONG_PROMPT], ["past the model's context length of 40,960 tokens",
                                 "config.json text_config.max_position_embeddings", "shorten the prompt"]),
    (["--max-new-tokens", "1000000000"], ["--max_new_tokens 1,000,000,000 plus the prompt with its image",
                                          "context length of 40,960 tokens", "use at most"]),
    (["--image", "{tmp}/bomb.png"], ["bomb.png", "is too large", "capped at 89,478,485 pixels"]),
    (["--image", "{tmp}/big.png"], ["big.png", "is too large (10000x10000 = 100,000,000 pixels)"]),
    (["--prompt", "caf\udce9"], ["not valid UTF-8"]),  # a latin-1 byte on the command line
    (["--output", "{tmp}/r.json"], ["--output is the --eval result file"]),  # was silently ignored
])
def test_inference_refuses_before_the_model_loads(inference, files, cli, capsys, argv, messages):
    image = ["--image", UW3 / LINES[0]] if "--image" not in argv else []
    line = one_error_line_after(cli(inference, "--model-path", CHECKPOINT, *image,
                                    *[a.replace("{tmp}", str(files)) for a in argv]), capsys)
    assert all(m in line for m in messages), line


def one_error_line_after(code: int, capsys) -> str:
    assert code == 2
    return one_error_line(capsys)


def test_prompt_length_counts_image_tokens(inference, cli, capsys):
    """The count in the message is the model input's real length: image tokens + prompt + chat format."""
    line = one_error_line_after(cli(inference, "--model-path", CHECKPOINT, "--image", UW3 / LINES[0], "--prompt",
                                    LONG_PROMPT), capsys)
    processor = inference.load_processor(CHECKPOINT)
    real = processor([UW3 / LINES[0]], LONG_PROMPT)["input_ids"].shape[1]
    images = processor.image_tokens(*reversed(inference.read_image(UW3 / LINES[0]).size))
    assert f"is {real:,} tokens ({images:,} image + {real - images:,} prompt" in line, line


def test_context_length_comes_from_the_config(inference, cli, capsys, tmp_path):
    """A checkpoint whose decoder has 512 positions: 600 new tokens are refused, naming 512."""
    folder = tmp_path / "short-context"
    folder.mkdir()
    for file in CHECKPOINT.iterdir():
        (folder / file.name).symlink_to(file)
    config = json.loads((CHECKPOINT / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 512
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(config))
    line = one_error_line_after(cli(inference, "--model-path", folder, "--image", UW3 / LINES[0],
                                    "--max-new-tokens", "600"), capsys)
    assert "context length of 512 tokens" in line and "use at most" in line, line


def test_config_that_is_not_an_object(inference, cli, capsys, tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    line = one_error_line_after(cli(inference, "--model-path", tmp_path, "--image", UW3 / LINES[0]), capsys)
    assert "is not a JSON object" in line, line


def test_python_api_refuses_past_the_context_before_generating(monkeypatch):
    """AnandaSkyOCR.recognize (no CLI check in front) refuses too, before generate runs."""
    inference = load_script(ANANDASKY_FOLDER, "inference")
    ocr = inference.AnandaSkyOCR(CHECKPOINT, device="cpu")
    monkeypatch.setattr(ocr.model, "generate", lambda *a, **k: pytest.fail("generate ran"))
    with pytest.raises(inference.UserError, match="max_new_tokens 1,000,000,000 plus the input"):
        ocr.recognize(UW3 / LINES[0], max_new_tokens=10**9)
    with pytest.raises(inference.UserError, match="past the model's context length of 40,960"):
        ocr.logits(UW3 / LINES[0], prompt=LONG_PROMPT)


# --- eval_accuracy.py -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--output", "/proc/parity.json"], "is not a writable folder"),  # was found after the whole comparison
    (["--output", "{tmp}"], "is a folder"),
    (["--prompt", LONG_PROMPT], "past the model's context length of 40,960 tokens"),
    (["--image", "{tmp}/bomb.png"], "is too large"),
])
def test_eval_accuracy_refuses_before_the_models_load(files, cli, capsys, monkeypatch, argv, message):
    evaluator = load_script(ANANDASKY_FOLDER, "eval_accuracy")
    never_load(evaluator, monkeypatch)
    line = one_error_line_after(cli(evaluator, "--model-path", CHECKPOINT,
                                    *[a.replace("{tmp}", str(files)) for a in argv]), capsys)
    assert message in line, line


# --- eval_ocr.py ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("output, message", [
    ("{tmp}/ocr.jsonl", "is the same file as --output"),  # the summary would overwrite its own sample log
    ("/proc/ocr.json", "is not a writable folder"),
    ("{tmp}", "is a folder"),
])
def test_eval_ocr_outputs_checked_before_the_model_loads(E, tmp_path, cli, capsys, output, message):
    data = uw3_lines(tmp_path)
    output = output.replace("{tmp}", str(tmp_path))
    line = one_error_line_after(cli(E, "--model-path", CHECKPOINT, "--data", data, "--output", output), capsys)
    assert message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lines"]  # nothing written


@pytest.mark.parametrize("image, message", [
    ("notes.png", "notes.png' is not a readable image"),  # was found after the model loaded, under the bar
    ("bomb.png", "is too large"),
    ("big.png", "is too large"),
])
def test_eval_ocr_checks_every_image_before_the_model_loads(E, files, cli, capsys, image, message):
    data = labels(files / "data", [str(UW3 / LINES[0]), str(files / image)])
    line = one_error_line_after(cli(E, "--model-path", CHECKPOINT, "--data", data, "--output",
                                    files / "o.json"), capsys)
    assert message in line, line


@pytest.mark.parametrize("argv, message", [
    (["--prompt", LONG_PROMPT], "past the model's context length of 40,960 tokens"),
    (["--max-new-tokens", "1000000000"], "use at most"),
    (["--limit", "0"], "must be >= 1"),
])
def test_eval_ocr_lengths_checked_before_the_model_loads(E, tmp_path, cli, capsys, argv, message):
    line = one_error_line_after(cli(E, "--model-path", CHECKPOINT, "--data", uw3_lines(tmp_path), "--output",
                                    tmp_path / "o.json", *argv), capsys)
    assert message in line, line


@pytest.mark.slow
def test_eval_ocr_empty_labels(E, tmp_path, cli, capsys):
    data = labels(tmp_path / "data", [], text="")
    line = one_error_line_after(cli(E, "--model-path", CHECKPOINT, "--data", data), capsys)
    assert "must start with the header" in line, line


@pytest.mark.slow
def test_labels_with_a_huge_field_a_bom_and_blank_lines(E, tmp_path):
    """csv stopped at a 128 KB field with a traceback; a BOM (Windows editors) broke the header check."""
    huge = "x" * 200_000
    data = labels(tmp_path / "data", [], text=f"\ufeffimage\ttext\r\na.png\t{huge}\r\n\r\nb.png\tshort\r\n")
    folder, items = E.load_labels(str(data))
    assert items == [{"image": "a.png", "text": huge}, {"image": "b.png", "text": "short"}]


class FakeOCR:
    """Stands in for the model in the progress-bar test: every line reads as 'x'."""
    device, dtype_name = "cpu", "fp32"

    def recognize(self, images, **kwargs):
        return ["x"] * len(images)

    def describe(self):
        return {"code_source": "fake"}


@pytest.mark.slow
def test_error_after_the_bar_started_is_on_a_line_of_its_own(E, tmp_path, cli, capsys, monkeypatch):
    """An image that breaks after the up-front check (here: replaced mid-run) fails under the progress bar; the
    message must not share the bar's line."""
    real_load, calls = E.load_line_image, []

    def second_fails(path, rotate):
        calls.append(path)
        if len(calls) > 1:
            raise E.UserError(f"image file {str(path)!r} is not a readable image (truncated)")
        return real_load(path, rotate)

    monkeypatch.setattr(E, "AnandaSkyOCR", lambda *a, **k: FakeOCR())
    monkeypatch.setattr(E, "load_line_image", second_fails)
    assert cli(E, "--model-path", CHECKPOINT, "--data", uw3_lines(tmp_path), "--output", tmp_path / "o.json",
               "--batch-size", "1") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ocr:" in err
    assert [line for line in err.split("\n") if "error:" in line][0].startswith("error: image file"), err
