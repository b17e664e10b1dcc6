"""--amp and the memory layout (core.precision): bf16 wherever the hardware has it, channels_last
where it was measured faster; results change by rounding only, and never silently not at all."""
import json

import pytest
import torch
from conftest import tiny_args

import train_adv
import train_fda
import train_mpl
import train_source
from core import precision
from core.evaluation import load_model, predict_logits
from core.labels import NUM_CLASSES
from core.models import build_discriminator, build_model
from core.precision import amp_dtype, inference_autocast, set_memory_format

CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Force the CPU's bf16 verdict (the path is the same; only its speed needs the silicon)."""
    def force(native):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    return force


def test_amp_on_a_cpu_with_and_without_native_bf16(bf16_cpu, capsys):
    bf16_cpu(True)
    assert amp_dtype(CPU, True) == torch.bfloat16 and amp_dtype(CPU, False) is None
    with inference_autocast(CPU, True)():
        y = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
    assert y.dtype == torch.bfloat16
    bf16_cpu(False)
    precision._note_no_bf16.cache_clear()
    assert amp_dtype(CPU, True) is None and amp_dtype(CPU, True) is None
    note = capsys.readouterr().out
    assert note.count("--amp has no effect on this CPU") == 1     # one line, once


def test_cpu_bf16_probe_agrees_with_lscpu():
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert precision.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.fixture(scope="module")
def trained(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fp32"
    train_source.main(train_source.parse_args(tiny_args(tiny_demo, out, "--epochs", 2)))
    return out / "last.pth"


@pytest.mark.parametrize("module", [train_source, train_adv, train_fda, train_mpl])
def test_demo_runs_in_mixed_precision_exactly_where_it_is_native(module, trained, bf16_cpu,
                                                                  tmp_path):
    """--demo's --amp default follows the CPU's bf16 (no note where it has none: the user did
    not ask); --amp / --no-amp win; without --demo, float32 unless asked."""
    extra = ["--out", str(tmp_path / "run"), "--device", "cpu"]
    extra += ["--teacher", str(trained)] if module is train_mpl else []
    without_demo = ["--source-root", "s", "--val-root", "v", "--target-root", "t"]
    without_demo = without_demo if module is not train_source else without_demo[:4]
    for native in (True, False):
        bf16_cpu(native)
        assert module.parse_args(["--demo", *extra]).amp is native
        assert module.parse_args(["--demo", "--no-amp", *extra]).amp is False
        assert module.parse_args(["--demo", "--amp", *extra]).amp is True
        assert module.parse_args([*without_demo, *extra]).amp is False
        assert module.parse_args([*without_demo, "--amp", *extra]).amp is True


def test_amp_inference_is_bf16_and_close_to_fp32(trained, bf16_cpu):
    """If autocast were silently off, the two would be equal; if it were broken, far apart."""
    bf16_cpu(True)
    model, size, _ = load_model(trained, CPU, amp=True)
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    fp32 = predict_logits(model, images, size, size)
    with inference_autocast(CPU, True)():
        bf16 = predict_logits(model, images, size, size)
    assert not torch.equal(fp32, bf16)
    assert (fp32 - bf16).abs().max() < 0.1 * fp32.abs().max()
    assert (fp32.argmax(1) == bf16.argmax(1)).float().mean() > 0.95


def test_forced_bf16_training_differs_from_fp32_by_rounding(tiny_demo, tmp_path, bf16_cpu):
    """The same run's loss, iteration by iteration: different under --amp (autocast acted),
    within a few percent (by rounding; another seed's run differs by far more)."""
    bf16_cpu(True)
    losses = {}
    for name, extra in (("fp32", ()), ("bf16", ("--amp",)), ("seed", ("--seed", 6))):
        out = tmp_path / name
        train_source.main(train_source.parse_args(tiny_args(
            tiny_demo, out, "--epochs", 1, "--iters-per-epoch", 3, "--log-every", 1, *extra)))
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[name] = torch.tensor([r["loss"] for r in records if r.get("event") == "train"])
    assert len(losses["fp32"]) == 3
    assert not torch.equal(losses["fp32"], losses["bf16"])
    assert ((losses["fp32"] - losses["bf16"]).abs() / losses["fp32"]).max() < 0.02
    assert ((losses["fp32"] - losses["seed"]).abs() / losses["fp32"]).max() > 0.02


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("build", [
    lambda: build_model("bisenet", NUM_CLASSES, "resnet18", pretrained="none"),
    lambda: build_model("deeplabv2", NUM_CLASSES, "resnet101", pretrained="none"),
    lambda: build_discriminator("dsc", NUM_CLASSES),
], ids=["bisenet", "deeplabv2", "dsc"])
def test_memory_format_follows_the_measured_table(build, dtype):
    """Weights and the inputs their forward sees are in the table's layout; the output is the
    default layout's to rounding."""
    torch.manual_seed(0)
    reference = build().eval()
    model = set_memory_format(build().eval(), CPU, dtype)
    model.load_state_dict(reference.state_dict())
    want_cl = precision.prefers_channels_last(model, CPU, dtype)
    precision_name = "fp32" if dtype is None else "bf16"
    assert want_cl == (("cpu", type(model).__name__, precision_name)
                       not in precision.CONTIGUOUS_FASTER)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_pre_hook(lambda m, args: seen.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    channels = 3 if hasattr(model, "backbone") or type(model).__name__ == "DeepLabV2" else \
        NUM_CLASSES
    x = torch.randn(1, channels, 64, 96)
    if want_cl:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    else:   # a channels_last input (say another network's output) is turned back
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got, want = model(x), reference(x.contiguous())
    assert seen[0] == want_cl
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()   # float rounding only
    # an explicit --channels-last / --no-channels-last wins over the table
    assert set_memory_format(build(), CPU, dtype, choice=not want_cl)  # builds either way
