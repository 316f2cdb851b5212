"""AnandaSky inference.py end to end on the seeded random checkpoint: --eval, the seed's spelling of eval_accuracy.py
(PASS, the same record; FAIL when the model under test is broken), OCR of real scanned lines through main() and the
Python class, and bad inputs (exit 2, one line). eval_accuracy in fp32 and bf16: the port contract (tests/ports/)."""
from __future__ import annotations

import json
import struct
import zlib

import pytest
import torch
from PIL import Image

from tests.support import ANANDASKY_FOLDER, load_script


@pytest.fixture
def inference():
    return load_script(ANANDASKY_FOLDER, "inference")


def scans(shared_data, n: int) -> list:
    return sorted((shared_data / "ocr" / "uw3_500" / "images").glob("*.bin.png"))[:n]


@pytest.mark.slow
def test_eval_is_eval_accuracy(inference, anandasky_checkpoint, cli, tmp_path, capsys, monkeypatch):
    """`inference.py --eval` runs eval_accuracy.main: the same parity record, in the same default place."""
    evaluator = load_script(ANANDASKY_FOLDER, "eval_accuracy")
    monkeypatch.setattr(evaluator, "HERE", tmp_path)  # inference imports this module object: outputs stay here
    assert cli(inference, "--model-path", anandasky_checkpoint, "--device", "cpu", "--dtype", "fp32", "--eval") == 0
    assert "OVERALL: PASS" in capsys.readouterr().out
    result = json.loads((tmp_path / "results" / "parity_test_checkpoint_cpu_fp32.json").read_text())
    assert result["kind"] == "parity" and result["passed"] is True and result["meta"]["dtype"] == "fp32"
    assert result["parts"]["vision"]["thresholds"]["rel_l2"] == {"max": 1e-4}
    assert len(result["inputs"]) == 6 and all(i["text_positions"] > 10 for i in result["inputs"])
    assert 38e6 <= result["num_parameters"] <= 44e6


@pytest.mark.slow
def test_eval_fails_when_the_device_side_is_wrong(inference, anandasky_checkpoint, cli, tmp_path, monkeypatch,
                                                  shared_data):
    real_init, built = inference.AnandaSkyOCR.__init__, []

    def broken_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        built.append(self)
        if len(built) == 1:  # the model under test (built before the reference): its bridge output 3% off
            with torch.no_grad():
                self.model.bridge.fc2.weight.mul_(1.03)

    monkeypatch.setattr(inference.AnandaSkyOCR, "__init__", broken_init)
    output = tmp_path / "eval.json"
    assert cli(inference, "--model-path", anandasky_checkpoint, "--dtype", "fp32", "--eval", "--output", output,
               "--image", scans(shared_data, 1)[0]) == 1
    result = json.loads(output.read_text())
    parts = result["parts"]
    assert result["passed"] is False and parts["vision"]["passed"] is False and parts["logits"]["passed"] is False
    assert any("rel_l2" in failure for failure in parts["vision"]["failures"])
    assert result["headline"] == {"passed": False} and result["failures"][0].startswith("vision: ")
    assert len(result["inputs"]) == 8  # the scan was added to the three rendered images, each with two prompts
    assert result["locate"]["first_divergent_module"] == "bridge.fc2"  # run by itself after the FAIL


def test_diagnosis_flags_need_eval(inference, anandasky_checkpoint, cli, capsys, shared_data):
    assert cli(inference, "--model-path", anandasky_checkpoint, "--image", scans(shared_data, 1)[0], "--locate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "go with --eval" in err[0]


@pytest.mark.slow
def test_ocr_real_scans_through_main(inference, anandasky_checkpoint, shared_data, cli, capsys):
    files = scans(shared_data, 3)
    assert cli(inference, "--model-path", anandasky_checkpoint, "--image", *files, "--max-new-tokens", "6",
               "--batch-size", "2") == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files]
    assert all(line.split("\t", 1)[1].strip() for line in lines)  # some (random-weight) text for every image
    assert "3 image(s)" in captured.err
    # one image per batch gives the same text: the packed vision pass and left padding change nothing
    assert cli(inference, "--model_path", anandasky_checkpoint, "--image", *files, "--max_new_tokens", "6",
               "--batch_size", "1") == 0
    assert capsys.readouterr().out.splitlines() == lines


@pytest.mark.slow
def test_python_class(inference, anandasky_checkpoint, shared_data, monkeypatch):
    monkeypatch.setenv(inference.ENV_MODEL_PATH, str(anandasky_checkpoint))
    ocr = inference.AnandaSkyOCR(device="cpu")  # the folder from $ANANDASKY_MODEL_PATH
    assert ocr.dtype_name == "fp32" and type(ocr.model).__module__ == "modeling_anandasky_patched"
    scan = scans(shared_data, 1)[0]
    texts = ocr.recognize([scan, Image.open(scan)], max_new_tokens=4)
    assert len(texts) == 2 and texts[0] == texts[1]
    assert ocr.recognize(scan, max_new_tokens=4) == texts[:1]
    logits = ocr.logits(scan)
    assert logits.dtype is torch.float32 and logits.shape[1] == ocr.model.config.text_config.vocab_size


def png_with_width_zero() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)  # width 0, height 10, 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def bad_files(folder, shared_data) -> dict:
    scan = scans(shared_data, 1)[0].read_bytes()
    files = {"text.png": b"this is not an image\n", "truncated.png": scan[:len(scan) // 2], "empty.png": b"",
             "zero-width.png": png_with_width_zero()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "no-config").mkdir()
    (folder / "no-weights").mkdir()
    (folder / "no-weights" / "config.json").write_text('{"model_type": "anandasky"}')
    (folder / "llama").mkdir()
    (folder / "llama" / "config.json").write_text('{"model_type": "llama"}')
    return files


@pytest.mark.slow
@pytest.mark.parametrize("argv, message", [
    ([], "make_test_checkpoint.py --output test_checkpoint"),
    (["--model-path", "{tmp}/absent"], "does not exist"),
    (["--model-path", "{tmp}/no-config"], "has no config.json"),
    (["--model-path", "{tmp}/no-weights"], "has no weights"),
    (["--model-path", "{tmp}/llama"], "not AnandaSky"),
    (["--model-path", "{ckpt}"], "pass --image"),
    (["--model-path", "{ckpt}", "--image", "{tmp}/missing.png"], "does not exist"),
    (["--model-path", "{ckpt}", "--image", "{tmp}"], "is a folder"),
    (["--model-path", "{ckpt}", "--image", "{tmp}/text.png"], "not a readable image"),
    (["--model-path", "{ckpt}", "--image", "{tmp}/truncated.png"], "truncated"),
    (["--model-path", "{ckpt}", "--image", "{tmp}/empty.png"], "empty (0 bytes)"),
    (["--model-path", "{ckpt}", "--image", "{tmp}/zero-width.png"], "not a readable image"),
    (["--model-path", "{ckpt}", "--eval", "--image", "{tmp}/truncated.png"], "truncated"),
    (["--model-path", "{ckpt}", "--image", "{scan}", "--max-new-tokens", "0"], "must be >= 1"),
    (["--model-path", "{ckpt}", "--image", "{scan}", "--batch-size", "0"], "must be >= 1"),
    (["--model-path", "{ckpt}", "--image", "{scan}", "--device", "gpu"], "unknown device"),
    (["--model-path", "{ckpt}", "--image", "{scan}", "--prompt", "say <|image_pad|>"], "special tokens"),
])
def test_bad_input(inference, anandasky_checkpoint, shared_data, tmp_path, cli, capsys, monkeypatch, argv,
                   message):
    monkeypatch.delenv(inference.ENV_MODEL_PATH, raising=False)
    bad_files(tmp_path, shared_data)
    values = {"tmp": tmp_path, "ckpt": anandasky_checkpoint, "scan": scans(shared_data, 1)[0]}
    assert cli(inference, *[a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
