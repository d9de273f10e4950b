"""The TensorRT path: what runs without TensorRT (profiles, cache keys, graph preparation, the
Triton server repository, the CLIs' missing-TensorRT errors), and, marked ``gpu``, engines
built and checked against PyTorch where tensorrt and CUDA are present (skipped elsewhere).
Mamba's plugins themselves (shape rules, kernel wrappers, PTX): test_trt_plugins.py.
"""

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

onnx = pytest.importorskip("onnx")

from _trt_fixtures import export_tiny  # noqa: E402

from hybrid_mllm.core.errors import HybridError  # noqa: E402
from hybrid_mllm.export.onnx import parity  # noqa: E402
from hybrid_mllm.export.trt import cache  # noqa: E402
from hybrid_mllm.export.trt.build import BuildOptions, prepare_graph  # noqa: E402
from hybrid_mllm.export.trt.parity import parity_chains  # noqa: E402
from hybrid_mllm.export.trt.triton_server import model_config, write_model_repository  # noqa: E402
from hybrid_mllm.plugins.mixers.ops_onnx import DOMAIN  # noqa: E402
from hybrid_mllm.runtime.trt import profiles  # noqa: E402
from hybrid_mllm.runtime.trt.errors import EngineMismatchError, version_tuple  # noqa: E402
from hybrid_mllm.runtime.trt.platform import Platform, check_compatible  # noqa: E402

def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _has_export_gate() -> bool:
    """onnxruntime and onnxruntime-extensions: the custom export's own gate runs before the engine's."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxruntime_extensions"))


needs_trt = pytest.mark.skipif(not (_has_tensorrt() and torch.cuda.is_available() and _has_export_gate()),
                               reason="needs tensorrt, a CUDA GPU, onnxruntime and onnxruntime-extensions "
                                      "(scripts/gpu_check.sh runs these)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("trt"))


# ---------------------------------------------------------------------------------------
# Profiles, cache keys, graph preparation
# ---------------------------------------------------------------------------------------


def test_profiles_cover_every_decoder_input(tiny):
    graph = tiny[3]
    limits = profiles.ProfileLimits(max_batch=4, max_seq=512, max_past=4096, opt_seq=256)
    prefill, decode = profiles.decoder_profiles(graph["inputs"], limits)
    names = [i["name"] for i in graph["inputs"]]
    assert list(prefill.shapes) == names == list(decode.shapes)
    assert prefill.shapes["inputs_embeds"] == ((1, 1, 32), (1, 256, 32), (4, 512, 32))
    assert decode.shapes["inputs_embeds"] == ((1, 1, 32), (1, 1, 32), (4, 1, 32))
    assert decode.shapes["mask"] == ((1, 1), (1, 1), (4, 1))
    assert prefill.shapes["past.0.ssm_state"] == ((1, 64, 8), (1, 64, 8), (4, 64, 8))
    k = next(n for n in names if n.startswith("past.1.k"))
    assert prefill.shapes[k][0][2] == 0 and prefill.shapes[k][2][2] == 4096 and decode.shapes[k][1][2] == 256
    assert prefill.shapes["past.1.kmask"] == ((1, 0), (1, 0), (4, 4096))


def test_profile_choice_chunks_and_limits():
    assert profiles.choose_profile(1) == profiles.DECODE and profiles.choose_profile(2) == profiles.PREFILL
    assert profiles.prefill_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert profiles.prefill_chunks(3, 8) == [(0, 3)]
    limits = profiles.ProfileLimits(max_batch=2, max_seq=8, max_past=16)
    profiles.check_fits(2, 15, 1, limits)
    with pytest.raises(HybridError, match="batch 3 is larger than the engine's max batch 2"):
        profiles.check_fits(3, 0, 1, limits)
    with pytest.raises(HybridError, match="17 tokens in total .* exceed the engine's max 16: rebuild"):
        profiles.check_fits(1, 16, 1, limits)
    with pytest.raises(HybridError, match="max past .* must be >= max sequence"):
        profiles.ProfileLimits(max_seq=64, max_past=32).check()
    with pytest.raises(HybridError, match="axis 'frames' that no TensorRT profile covers"):
        profiles.decoder_profiles([{"name": "x", "shape": ["frames"]}], profiles.ProfileLimits())


def test_parity_chains_are_clamped_to_the_profiles():
    assert parity_chains(parity.DECODER_CHAINS, profiles.ProfileLimits()) == parity.DECODER_CHAINS
    small = parity_chains(parity.DECODER_CHAINS, profiles.ProfileLimits(max_batch=2, max_seq=64, max_past=64))
    assert small == (("prefill-decode-prefill", 2, 11, (37, 1, 26)), ("decode-from-empty", 1, 0, (1, 1)),
                     ("chunk-boundary", 2, 0, (16, 17)))
    one = parity_chains(parity.DECODER_CHAINS, profiles.ProfileLimits(max_batch=1, max_seq=2, max_past=2))
    assert [c[1] for c in one] == [1, 1, 1] and all(sum(c[3]) <= 2 and c[2] < c[3][0] for c in one)
    assert any(c[3][0] > 1 for c in parity_chains(parity.DECODER_CHAINS, profiles.ProfileLimits(max_batch=1)))


def test_parity_chains_refuse_limits_that_leave_none():
    from hybrid_mllm.export.trt.errors import EngineBuildError

    with pytest.raises(EngineBuildError, match="the engine limits leave no parity check: raise --max-past"):
        parity_chains(parity.DECODER_CHAINS, profiles.ProfileLimits(max_seq=1, max_past=1))


def test_export_trt_checks_the_triton_repo_before_writing(tiny, tmp_path, monkeypatch):
    from hybrid_mllm.export.trt import exporter

    monkeypatch.setattr(exporter, "import_tensorrt", lambda: None)  # the checks run without TensorRT
    monkeypatch.setattr(exporter, "require_cuda", lambda: None)
    (tmp_path / "repo" / "hybrid_decoder").mkdir(parents=True)
    with pytest.raises(HybridError, match="already exists: choose another --triton-repo"):
        exporter.export_trt(tiny[0], tmp_path / "engine", options=BuildOptions(), triton_repo=tmp_path / "repo")
    with pytest.raises(HybridError, match="Python \\(jit\\) plugins"):
        exporter.export_trt(tiny[0], tmp_path / "engine", options=BuildOptions(plugin_impl="jit"),
                            triton_repo=tmp_path / "new-repo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


PLATFORM = Platform("10.13.0.35", "NVIDIA H100 80GB HBM3", (9, 0))


def test_cache_key_changes_with_graph_platform_and_options(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "a.onnx.data"
    a.write_bytes(b"graph")
    b.write_bytes(b"weights")
    digest = cache.graph_digest([a, b])
    options = BuildOptions().to_dict()
    key = cache.cache_key(digest, PLATFORM, options)
    assert key == cache.cache_key(digest, PLATFORM, dict(reversed(list(options.items()))))  # order-free
    b.write_bytes(b"weightz")
    assert cache.graph_digest([a, b]) != digest  # the external weights count
    others = [
        cache.cache_key(digest, Platform("10.14.1", PLATFORM.gpu, (9, 0)), options),
        cache.cache_key(digest, Platform(PLATFORM.tensorrt, "NVIDIA H200", (9, 0)), options),
        cache.cache_key(digest, Platform(PLATFORM.tensorrt, PLATFORM.gpu, (8, 0)), options),
        cache.cache_key(digest, PLATFORM, BuildOptions(precision="fp16").to_dict()),
        cache.cache_key(digest, PLATFORM, BuildOptions(plugin_impl="jit").to_dict()),
        cache.cache_key(digest, PLATFORM, BuildOptions(limits=profiles.ProfileLimits(max_seq=1024)).to_dict()),
    ]
    assert len({key, *others}) == 7


def test_an_engine_from_another_gpu_or_tensorrt_is_refused():
    check_compatible(PLATFORM, PLATFORM, engine="e.plan")
    with pytest.raises(EngineMismatchError, match=r"^e.plan was built for NVIDIA H100 80GB HBM3 \(sm_90\) with TensorRT "
                                                  r"10.13.0.35, but this is NVIDIA A100 \(sm_80\) with TensorRT "
                                                  r"10.13.0.35: rebuild it here with hybrid-export --trt$"):
        check_compatible(PLATFORM, Platform(PLATFORM.tensorrt, "NVIDIA A100", (8, 0)), engine="e.plan")
    with pytest.raises(EngineMismatchError, match="with TensorRT 10.9.0"):
        check_compatible(PLATFORM, Platform("10.9.0", PLATFORM.gpu, (9, 0)), engine="e.plan")
    assert version_tuple("10.13.0.35") == (10, 13, 0, 35) and version_tuple("11.0.0b1") == (11, 0)


def test_cache_store_uses_a_private_temporary_file(tmp_path):
    other = tmp_path / "KEY.plan.tmp"  # what a concurrent build wrote under the old fixed name
    other.write_bytes(b"another build, half written")
    assert cache.store(tmp_path, "KEY", b"plan") == tmp_path / "KEY.plan"
    assert (tmp_path / "KEY.plan").read_bytes() == b"plan" and other.read_bytes() == b"another build, half written"
    with ThreadPoolExecutor(4) as pool:  # concurrent stores of one key: one complete plan, no leftovers
        list(pool.map(lambda n: cache.store(tmp_path / "c", "KEY", bytes([n]) * 1_000_000), range(8)))
    [plan] = (tmp_path / "c").iterdir()
    assert plan.name == "KEY.plan" and len(set(plan.read_bytes())) == 1


def _engine_dir(tmp_path, edit) -> Path:
    """A directory whose engine.json is a valid one changed by `edit` (info -> document), or a string."""
    info = {"platform": {"tensorrt": "10.13.0", "gpu": "NVIDIA H100", "compute_capability": [9, 0]},
            "options": {"limits": profiles.ProfileLimits().to_dict()}, "plan": "decoder.plan"}
    (tmp_path / "engine.json").write_text(edit if isinstance(edit, str) else json.dumps(edit(info)))
    return tmp_path


def _without_platform(info):
    del info["platform"]
    return info


@pytest.mark.parametrize(("edit", "message"), [
    ("{not json", r"engine.json: malformed \(JSONDecodeError: "),
    (_without_platform, r"engine.json: malformed \(missing key 'platform'\); rebuild the engine"),
    (lambda info: {**info, "options": {"limits": {"max_bach": 2}}}, r"engine.json: malformed \(TypeError: .*max_bach"),
    (lambda info: [], r"engine.json: malformed \(TypeError: "),
    (lambda info: {**info, "plan": "../elsewhere.plan"}, r"path '\.\./elsewhere.plan' leaves the engine directory"),
    (lambda info: {**info, "plan": "/tmp/x.plan"}, r"absolute path '/tmp/x.plan'"),
])
def test_malformed_engine_info_is_one_line(tmp_path, edit, message):
    from hybrid_mllm.runtime.trt.engine import read_engine_info

    assert read_engine_info(_engine_dir(tmp_path, lambda info: info))["plan"] == "decoder.plan"
    with pytest.raises(EngineMismatchError, match=message) as error:
        read_engine_info(_engine_dir(tmp_path, edit))
    assert "\n" not in str(error.value)


def test_prepare_graph_marks_plugin_nodes_only(tiny):
    model = onnx.load(str(tiny[2]), load_external_data=False)
    for aot in (True, False):
        prepared = prepare_graph(model, aot=aot)
        for node in prepared.graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.domain == DOMAIN:
                assert attrs["plugin_namespace"] == b"hybrid" and attrs["aot"] == int(aot)
            else:
                assert "plugin_namespace" not in attrs
    assert not any(a.name == "aot" for n in model.graph.node for a in n.attribute)  # the input is not changed
    model.graph.node[0].domain, model.graph.node[0].op_type = DOMAIN, "Mystery"
    with pytest.raises(HybridError, match="hybrid::Mystery node, which no TensorRT plugin implements"):
        prepare_graph(model, aot=True)


# ---------------------------------------------------------------------------------------
# Triton Inference Server repository
# ---------------------------------------------------------------------------------------


def parse_pbtxt(text: str) -> dict:
    """A protobuf text-format reader for what `model_config` writes: scalars, strings, enums,
    lists [a, b] and messages {...}; repeated fields become lists."""
    tokens = re.findall(r'"[^"]*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#.*", "", text))
    pos = 0

    def value():
        nonlocal pos
        tok = tokens[pos]
        pos += 1
        if tok == "{":
            return fields("}")
        if tok == "[":
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        if tok.startswith('"'):
            return tok[1:-1]
        return int(tok) if re.fullmatch(r"-?\d+", tok) else tok

    def fields(end):
        nonlocal pos
        out = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            out[key] = value()
        pos += 1
        return out

    return fields(None)


def test_triton_config_round_trips_the_manifest(tiny, tmp_path):
    graph = tiny[3]
    manifest = {"graphs": {"decoder": {"file": "decoder.onnx", **graph}}, "state": [{}] * 4}
    config = parse_pbtxt(model_config(manifest, model_name="tiny"))
    assert config["name"] == "tiny" and config["platform"] == "tensorrt_plan" and config["max_batch_size"] == 0
    types = {"float32": "TYPE_FP32", "bool": "TYPE_BOOL"}
    for key, entries in (("input", graph["inputs"]), ("output", graph["outputs"])):
        got = config[key]
        assert [t["name"] for t in got] == [e["name"] for e in entries]
        assert [t["data_type"] for t in got] == [types[e["dtype"]] for e in entries]
        assert [t["dims"] for t in got] == [[d if isinstance(d, int) else -1 for d in e["shape"]] for e in entries]
    assert config["input"][0] == {"name": "inputs_embeds", "data_type": "TYPE_FP32", "dims": [-1, -1, 32]}
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_GPU"}]

    plan = tmp_path / "decoder.plan"
    plan.write_bytes(b"\x00plan")
    info = {"options": {"plugin_impl": "aot"},
            "platform": {"gpu": "NVIDIA H100", "compute_capability": [9, 0], "tensorrt": "10.13.0"}}
    model_dir = write_model_repository(tmp_path / "repo", manifest, plan, info=info, model_name="tiny")
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1", "1/model.plan", "README.md", "config.pbtxt"]
    assert (model_dir / "1" / "model.plan").read_bytes() == b"\x00plan"
    assert "no plugin library" in (model_dir / "README.md").read_text()
    with pytest.raises(HybridError, match="already exists"):
        write_model_repository(tmp_path / "repo", manifest, plan, info=info, model_name="tiny")
    with pytest.raises(HybridError, match="Python \\(jit\\) plugins, which Triton Inference Server cannot run"):
        write_model_repository(tmp_path / "repo2", manifest, plan, info={"options": {"plugin_impl": "jit"}})
    assert not (tmp_path / "repo2").exists()


# ---------------------------------------------------------------------------------------
# CLIs without TensorRT
# ---------------------------------------------------------------------------------------


@pytest.fixture
def no_tensorrt(tmp_path):
    """An environment where ``import tensorrt`` fails (whether or not it is installed)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "tensorrt.py").write_text("raise ImportError(\"No module named 'tensorrt'\")\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")])}


def test_export_trt_without_tensorrt_is_one_line_and_writes_nothing(tiny, tmp_path, no_tensorrt):
    out, repo = tmp_path / "engine", tmp_path / "repo"
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.export.cli_export", "--trt", str(tiny[0]), str(out),
                        "--triton-repo", str(repo)], check=False, capture_output=True, text=True, env=no_tensorrt, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "TensorRTUnavailableError: TensorRT is not installed: " in r.stderr and "pip install" in r.stderr
    assert not out.exists() and not repo.exists() and list(tmp_path.iterdir()) == [tmp_path / "shadow"]


def test_run_trt_without_tensorrt_is_one_line(tmp_path, no_tensorrt):
    r = subprocess.run([sys.executable, "-m", "hybrid_mllm.runtime.cli_run", "--trt", str(tmp_path), "--prompt", "x"],
                       check=False, capture_output=True, text=True, env=no_tensorrt, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "TensorRT is not installed: " in r.stderr


def test_export_trt_refuses_onnx_only_flags(tiny, tmp_path, capsys):
    from hybrid_mllm.core.cli import run_cli
    from hybrid_mllm.export import cli_export

    assert run_cli(cli_export.main, ["--trt", str(tiny[0]), str(tmp_path / "o"), "--fp16"]) == 2
    assert "--scan, --fp16 and --opset are for --onnx" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------
# With TensorRT and a GPU (skipped elsewhere; scripts/gpu_check.sh runs them)
# ---------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("plugin_impl", ["aot", "jit"])
def test_engine_passes_the_gate_and_generates_like_pytorch(tiny, tmp_path, plugin_impl):
    from hybrid_mllm.export.trt.exporter import TOLERANCE, export_trt
    from hybrid_mllm.runtime.generate import GenerationConfig, TorchDecoder, generate
    from hybrid_mllm.runtime.trt.engine import load_trt

    checkpoint, lm = tiny[0], tiny[1]
    options = BuildOptions(plugin_impl=plugin_impl, limits=profiles.ProfileLimits(max_batch=4, max_seq=64,
                                                                                 max_past=512))
    info = export_trt(checkpoint, tmp_path / "engine", options=options, cache_dir=tmp_path / "cache",
                      triton_repo=tmp_path / "repo" if plugin_impl == "aot" else None)
    assert max(info["tolerances"]["measured"].values()) <= TOLERANCE["fp32"]
    assert len(info["tolerances"]["measured"]) == 3  # every gate chain ran (prefills of 300 in chunks of 64)
    loaded = load_trt(tmp_path / "engine")
    g = torch.Generator().manual_seed(0)
    embeds, mask = torch.randn(2, 90, 32, generator=g), torch.ones(2, 90, dtype=torch.bool)
    mask[0, :7] = False
    config = GenerationConfig(max_new_tokens=12)
    expected = generate(TorchDecoder(lm), embeds, mask, config).tokens
    assert generate(loaded.decoder, embeds, mask, config).tokens == expected
    if plugin_impl == "aot":
        assert (tmp_path / "repo" / "hybrid_decoder" / "1" / "model.plan").is_file()


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_engines_within_tolerance(tiny, tmp_path, precision):
    from hybrid_mllm.export.trt.errors import EngineBuildError
    from hybrid_mllm.export.trt.exporter import TOLERANCE, export_trt

    options = BuildOptions(precision=precision, limits=profiles.ProfileLimits(max_batch=4, max_seq=128, max_past=512))
    try:
        info = export_trt(tiny[0], tmp_path / "engine", options=options, cache_dir=tmp_path / "cache")
    except EngineBuildError as e:  # TensorRT 11: strongly typed only (documented refusal)
        assert "strongly typed networks only" in str(e)
        return
    assert info["options"]["precision"] == precision
    measured, bound = info["tolerances"]["measured"], TOLERANCE[precision]
    assert info["tolerances"]["stated"] == bound and len(measured) == 3
    assert max(measured.values()) <= bound, f"{precision}: largest relative difference {measured} > {bound}"


@pytest.mark.gpu
@needs_trt
def test_engine_cache_hit_and_foreign_engine_refused(tiny, tmp_path):
    from hybrid_mllm.export.trt.build import build_engine
    from hybrid_mllm.runtime.trt.engine import open_engine

    options = BuildOptions(limits=profiles.ProfileLimits(max_batch=2, max_seq=32, max_past=64))
    first = build_engine(tiny[2], tiny[3]["inputs"], options, cache_dir=tmp_path)
    again = build_engine(tiny[2], tiny[3]["inputs"], options, cache_dir=tmp_path)
    assert not first.cached and again.cached and again.plan == first.plan
    (tmp_path / "decoder.plan").write_bytes(first.plan)
    info = {**first.info, "plan": "decoder.plan"}
    info["platform"] = {**info["platform"], "gpu": "Some Other GPU"}
    with pytest.raises(EngineMismatchError, match="was built for Some Other GPU"):
        open_engine(tmp_path, info)
