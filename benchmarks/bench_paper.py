"""The paper's configuration (configs/paper.yaml) end to end at full size, on random-weight networks written in
the official file formats: what it costs, and proof that every stage runs.

    python benchmarks/bench_paper.py                     # CPU proof: 2 refinement + 2 optimisation steps, batch 1,
                                                         # a lone photo's augmented copies 1 (paper: 5; --set)
    python benchmarks/bench_paper.py --device cuda       # GPU: the paper's 150 + 50 steps at batch 1 and 8
        [--steps 50] [--refine-steps 150] [--batches 1,8] [--files DIR] [--json FILE] [--threads 2]

Files (written to --files, else a temporary folder; each built with torch's default init, then saved and freed):
``stylegan2-ffhq-config-f.pt`` (rosinality {'g_ema','latent_avg'}, 1024 px, config-f), ``stylegan2-ffhq-1024.pkl``
(the same weights as an NVlabs network pickle, G_ema with the real FFHQ-1024 init_kwargs; loaded and compared),
``e4e_ffhq_encode.pt`` ({'state_dict': encoder.* + decoder.*, 'latent_avg' [18,512], 'opts'}, IR-SE50 body, input
256), ``model_ir_se50.pth`` (plain state dict), ``FaRL-Base-Patch16-LAIONFace20M-ep64.pth`` ({'state_dict':
visual.*}, ViT-B/16), ``vgg16-397923af.pth`` (torchvision layout, classifier included). The registry finds them
through $FACEANONYMIXER_HOME, except the VGG file, whose pinned sha256 a random file cannot have: it is passed as
``protect.models.lpips_backbone``. The files are written by a child process, so the peak RSS printed is that of
the protection alone (models loaded from disk + the run).

Checks while running: every W+ code is [n,18,512], every image [n,3,1024,1024], the PNG is 1024x1024 and its
sidecar names the models and the band; no socket is opened (an audit hook records and refuses any attempt).
Prints one JSON object: seconds per stage and per face, peak RSS (and peak GPU memory on CUDA), the checks.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import types
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FILES = dict(rosinality="stylegan2-ffhq-config-f.pt", nvlabs="stylegan2-ffhq-1024.pkl", e4e="e4e_ffhq_encode.pt",
             irse50="model_ir_se50.pth", farl="FaRL-Base-Patch16-LAIONFace20M-ep64.pth", vgg16="vgg16-397923af.pth")
NVLABS_FFHQ1024 = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=1024, img_channels=3,
                       mapping_kwargs=dict(num_layers=8),
                       synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256))
NETWORK_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                  "socket.bind", "urllib.Request", "http.client.connect", "ftplib.connect", "smtplib.connect")


# -- the network guard ---------------------------------------------------------------------------------------
class NetworkUsed(RuntimeError):
    pass


def install_network_guard() -> list[str]:
    """An audit hook (for the rest of the process) that records every attempt to use the network and refuses
    it. Returns the list it appends 'event args' to."""
    seen: list[str] = []

    def hook(event, args):
        if event in NETWORK_EVENTS:
            seen.append(f"{event} {args!r}"[:200])
            raise NetworkUsed(f"network use refused: {event}")
    sys.addaudithook(hook)
    return seen


# -- NVlabs network pickle (written without NVlabs code: the same opcodes a real snapshot has) ---------------
_BUFFERS = {"w_avg", "resample_filter", "noise_const"}
_CLASS = {"mapping": "MappingNetwork", "synthesis": "SynthesisNetwork", "torgb": "ToRGBLayer", "affine":
          "FullyConnectedLayer", "conv0": "SynthesisLayer", "conv1": "SynthesisLayer"}


class _Persistent:
    """Stand-in for an NVlabs ``@persistent_class`` instance: pickles as
    ``torch_utils.persistence._reconstruct_persistent_obj(meta)``."""

    def __init__(self, class_name: str):
        self.class_name = class_name
        self.params, self.buffers, self.modules, self.init_kwargs = {}, {}, {}, {}

    def __reduce__(self):
        state = dict(training=False, _parameters=self.params, _buffers=self.buffers, _non_persistent_buffers_set=set(),
                     _modules=self.modules, _init_args=(), _init_kwargs=self.init_kwargs)
        meta = dict(type="class", version=6, module_src="# training/networks.py (not stored: random-weight test file)",
                    class_name=self.class_name, state=state)
        return (_fake_modules()["torch_utils.persistence"]._reconstruct_persistent_obj, (meta,))


_FAKE: dict = {}


def _fake_modules() -> dict:
    """Importable stand-ins for ``torch_utils.persistence`` and ``dnnlib.util`` (only while pickling: the pickler
    looks each global up by module and name)."""
    if not _FAKE:
        tu, tup, dn, dnu = (types.ModuleType(n) for n in ("torch_utils", "torch_utils.persistence", "dnnlib",
                                                          "dnnlib.util"))

        def _reconstruct_persistent_obj(meta):   # never called here: only named in the pickle
            raise RuntimeError("stand-in")
        _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
        _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
        tup._reconstruct_persistent_obj = _reconstruct_persistent_obj
        easy = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
        dnu.EasyDict = easy
        tu.persistence, dn.util = tup, dnu
        _FAKE.update({"torch_utils": tu, "torch_utils.persistence": tup, "dnnlib": dn, "dnnlib.util": dnu})
    return _FAKE


@contextmanager
def _fake_imports():
    mods = _fake_modules()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def write_nvlabs_pickle(path: Path, nv_state: dict[str, torch.Tensor], init_kwargs: dict) -> None:
    """``{'G_ema': Generator}`` as an NVlabs snapshot: persistent objects per module, parameters as
    ``_rebuild_parameter``, buffers as plain tensors, nested kwargs as ``dnnlib.util.EasyDict``."""
    with _fake_imports() as mods:
        easy = mods["dnnlib.util"].EasyDict
        root = _Persistent("Generator")
        root.init_kwargs = {k: easy(v) if isinstance(v, dict) else v for k, v in init_kwargs.items()}
        for key, t in nv_state.items():
            *mods_path, leaf = key.split(".")
            node = root
            for j, name in enumerate(mods_path):
                if name not in node.modules:
                    cls = _CLASS.get(name, "SynthesisBlock" if name.startswith("b") and j == 1 else
                                     "FullyConnectedLayer")
                    node.modules[name] = _Persistent(cls)
                node = node.modules[name]
            t = t.detach().clone().contiguous()          # own storage: pickle saves whole storages
            if leaf in _BUFFERS:
                node.buffers[leaf] = t
            else:
                node.params[leaf] = torch.nn.Parameter(t, requires_grad=False)
        with open(path, "wb") as f:
            pickle.dump({"G_ema": root}, f, protocol=4)


# -- the files ------------------------------------------------------------------------------------------------
def _save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_paper_files(out: Path, seed: int = 0) -> dict[str, str]:
    """Random full-size networks in the official formats -> {what: path}. One network in memory at a time."""
    from faceanonymixer.models import stylegan2_convert as conv
    from faceanonymixer.models.clip_vit import VisionTransformer
    from faceanonymixer.models.e4e import Encoder4Editing
    from faceanonymixer.models.irse import Backbone
    from faceanonymixer.models.lpips import Backbone as VGGBackbone
    from faceanonymixer.models.stylegan2 import Generator
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}
    torch.manual_seed(seed)
    G = Generator(resolution=1024, channel_multiplier=2).eval()      # config-f
    G.compute_latent_avg(2000)
    sd = {k: v for k, v in G.state_dict().items() if k != "latent_avg"}
    latent_avg = G.latent_avg.clone()
    _save({"g_ema": sd, "latent_avg": latent_avg}, paths["rosinality"])
    write_nvlabs_pickle(paths["nvlabs"], conv.rosinality_to_nvlabs(sd, latent_avg), NVLABS_FFHQ1024)
    del G
    gc.collect()
    enc = Encoder4Editing()                                            # IR-SE50 body, 18 styles, input 256
    full = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    full.update({f"decoder.{k}": v for k, v in sd.items()})
    opts = dict(encoder_type="Encoder4Editing", stylegan_size=1024, start_from_latent_avg=True, input_nc=3,
                output_size=1024, dataset_type="ffhq_encode")
    _save({"state_dict": full, "latent_avg": latent_avg[None].repeat(18, 1), "opts": opts}, paths["e4e"])
    del enc, full, sd
    gc.collect()
    _save(Backbone(112).eval().state_dict(), paths["irse50"])
    vit = VisionTransformer(224, 16, 768, 12, 12, 512)
    _save({"state_dict": {f"visual.{k}": v for k, v in vit.state_dict().items()}}, paths["farl"])
    del vit
    gc.collect()
    vgg = {f"features.{k}": v for k, v in VGGBackbone("vgg").features.state_dict().items()}
    g = torch.Generator().manual_seed(seed + 1)
    for i, (o, n) in {0: (4096, 25088), 3: (4096, 4096), 6: (1000, 4096)}.items():   # the ImageNet classifier
        vgg[f"classifier.{i}.weight"] = torch.randn(o, n, generator=g) * 0.01
        vgg[f"classifier.{i}.bias"] = torch.zeros(o)
    _save(vgg, paths["vgg16"])
    return {k: str(v) for k, v in paths.items()}


# -- the run --------------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0    # Linux: kB


def run(files: dict[str, str], device: str, steps: int, refine_steps: int, batches: list[int], out: Path,
        photo: Path, extra: list[str]) -> dict:
    from faceanonymixer.keys import Key
    from faceanonymixer.models.loading import load_generator
    from faceanonymixer.pipeline import Protector, save_person
    from faceanonymixer.workflow import load_config
    sets = [f"protect.models.device={device}", f"protect.optim.steps={steps}",
            f"protect.refine.steps={refine_steps}", f"protect.models.lpips_backbone={files['vgg16']}"] + extra
    cfg = load_config(ROOT / "configs" / "paper.yaml", sets).protect
    rep: dict = dict(device=device, steps=steps, refine_steps=refine_steps, photo=photo.name, config="configs/paper.yaml",
                     overrides=sets[:3] + ["protect.models.lpips_backbone=<random vgg16 file>"] + extra)
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    prot = Protector(cfg)
    rep["load_s"] = round(time.perf_counter() - t0, 2)
    G = prot.generator
    rep["generator"] = dict(resolution=G.resolution, num_ws=G.num_ws, w_dim=G.w_dim)
    assert (G.resolution, G.num_ws, G.w_dim) == (1024, 18, 512), rep["generator"]
    assert prot.plan.key_layers == (3, 4, 5, 6, 7) and prot.lpips is not None and prot.attr.name == "farl-vit-b16"
    nv = load_generator(files["nvlabs"])                                # the same weights via the NVlabs pickle
    own = {k: v.cpu() for k, v in G.state_dict().items()}
    rep["nvlabs_pickle_equals_rosinality"] = all(torch.equal(v, own[k]) for k, v in nv.state_dict().items())
    assert rep["nvlabs_pickle_equals_rosinality"]
    del nv, own
    gc.collect()
    rep["peak_rss_mb_loaded"] = round(_peak_rss_mb())
    key = Key(bytes(range(32)))
    # batch 1 from the photo: detection + FFHQ alignment at 1024 + everything after it
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = prot.protect([str(photo)], key, name="sample")
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - t0
    assert tuple(res.images.shape) == (1, 3, 1024, 1024) and tuple(res.ws.shape) == (1, 18, 512), \
        (tuple(res.images.shape), tuple(res.ws.shape))
    assert torch.isfinite(res.images).all() and torch.isfinite(res.ws).all()
    pngs = save_person(res, out, prot)
    from PIL import Image
    with Image.open(pngs[0]) as im:
        png_size = im.size
    side = json.loads(pngs[0].with_suffix(".json").read_text())
    assert png_size == (1024, 1024) and side["resolution"] == 1024, (png_size, side["resolution"])
    rep["checks"] = dict(images=list(res.images.shape), ws=list(res.ws.shape), png=list(png_size),
                         sidecar_models=sorted(side["models"]), sidecar_mixing=side["mixing"])
    timing = dict(faces=1, seconds_per_face=round(total, 2), **res.timings)
    if cuda:
        timing["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    rep["batch"] = {"1": timing}
    # larger batches: the photo's aligned crop for n people, each under its own key (no detection time)
    x, _ = prot.load_face(str(photo))
    for b in [b for b in batches if b > 1]:
        people = [[x[0].cpu()] for _ in range(b)]
        keys = [Key(bytes([i]) * 32) for i in range(b)]
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            br = prot.protect_people(people, keys)
        except torch.OutOfMemoryError as e:
            rep["batch"][str(b)] = dict(faces=b, error=f"out of memory: {str(e)[:200]}")
            torch.cuda.empty_cache()
            continue
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert len(br.results) == b and not br.failures, br.failures
        timing = dict(faces=b, seconds_per_face=round(dt / b, 2), **br.results[0].timings)
        if cuda:
            timing["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
        rep["batch"][str(b)] = timing
    rep["peak_rss_mb"] = round(_peak_rss_mb())
    return rep


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, help="optimisation steps (default: 2 on cpu, the paper's 50 on cuda)")
    ap.add_argument("--refine-steps", type=int, help="refinement steps (default: 2 on cpu, the paper's 150 on cuda)")
    ap.add_argument("--batches", help="people per batch to time, comma-separated (default: 1 on cpu, 1,8 on cuda)")
    ap.add_argument("--files", help="folder for the random network files (kept; reused when complete)")
    ap.add_argument("--out", help="folder for the protected PNG + sidecar (default: inside the files folder)")
    ap.add_argument("--photo", help="sample photo (default: the installed obama.jpg)")
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                    help="config override (repeatable); default on the CPU: protect.optim.augment_copies=1 (a lone "
                         "photo's 5 copies make 6 images of 1024 px in one backward pass: too much memory for a "
                         "small machine), none on CUDA")
    ap.add_argument("--write-files-only", metavar="DIR", help=argparse.SUPPRESS)   # the child process
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.write_files_only:
        write_paper_files(Path(a.write_files_only))
        return 0
    cuda = a.device.startswith("cuda")
    steps = a.steps if a.steps is not None else (50 if cuda else 2)
    refine_steps = a.refine_steps if a.refine_steps is not None else (150 if cuda else 2)
    batches = [int(b) for b in (a.batches or ("1,8" if cuda else "1")).split(",")]
    extra = a.set if a.set is not None else ([] if cuda else ["protect.optim.augment_copies=1"])
    with tempfile.TemporaryDirectory(prefix="bench_paper_") as tmp:
        folder = Path(a.files or tmp)
        t0 = time.perf_counter()
        if not all((folder / f).is_file() for f in FILES.values()):
            subprocess.run([sys.executable, __file__, "--write-files-only", str(folder), "--threads",
                            str(a.threads)], check=True)
        write_s = round(time.perf_counter() - t0, 1)
        files = {k: str(folder / v) for k, v in FILES.items()}
        os.environ["FACEANONYMIXER_HOME"] = str(folder)
        from faceanonymixer.registry import data_dir
        photo = Path(a.photo) if a.photo else data_dir() / "samples" / "obama.jpg"
        seen = install_network_guard()
        rep = run(files, a.device, steps, refine_steps, batches, Path(a.out or folder / "out"), photo, extra)
        rep["write_files_s"] = write_s
        rep["file_mb"] = {k: round(Path(v).stat().st_size / 2 ** 20, 1) for k, v in files.items()}
        rep["network_events"] = seen
        rep["threads"] = a.threads
        if cuda:
            rep["gpu"] = torch.cuda.get_device_name()
    text = json.dumps(rep, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
