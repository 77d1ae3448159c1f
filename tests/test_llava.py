"""LLaVA end to end against HF `LlavaForConditionalGeneration` (tiny random model): image features,
prompt logits with HF's own input_ids and pixel values, on files from our converter and from
llama.cpp's (legacy mmproj: n-1 CLIP layers, swapped FFN names, F16 tensors); the mmproj
conventions; prompt building; generation; CLI = Python; errors."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import aircache_cpp as ac
import gguf_fixtures as fx
from kernel_select import ACT_Q8_REL_ERR, kernel_table
from fixture_configs import LLAVA

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
import convert_hf_to_gguf as conv  # noqa: E402

PROMPT = "USER: <image>\nWhat colour is the star? ASSISTANT:"


def rel_err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def images():
    rng = np.random.default_rng(5)
    square = (rng.random((48, 48, 3)) * 255).astype(np.uint8)
    tall = (rng.random((70, 33, 3)) * 255).astype(np.uint8)
    wide = np.zeros((20, 64, 3), np.uint8)
    wide[:, :, 0] = np.linspace(0, 255, 64)[None, :]
    wide[5:15, 20:40] = (250, 200, 30)
    return {"square": square, "tall": tall, "wide": wide}


@pytest.fixture(scope="module")
def hf_llava(tiny_llava):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(str(tiny_llava)).eval()
    return model, AutoProcessor.from_pretrained(str(tiny_llava))


@pytest.fixture(scope="module")
def ours(tiny_llava, tmp_path_factory):
    d = tmp_path_factory.mktemp("llava-ours")
    return conv.convert_llava(str(tiny_llava), str(d / "text.gguf"), str(d / "mmproj.gguf"), "f32")


def hf_inputs(processor, image, text=PROMPT, continuation=32, seed=0):
    enc = processor(images=image, text=text, return_tensors="pt")
    ids = enc.input_ids[0].tolist()
    cont = np.random.default_rng(seed).integers(3, 400, continuation).tolist()  # teacher-forced continuation
    return ids + cont, enc.pixel_values


def hf_logits(model, ids, pixel_values):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), pixel_values=pixel_values).logits[0].float().numpy()


def hf_state_from_files(model, text_path, mmproj_path):
    """The HF model's state dict with every weight replaced by what the two GGUF files hold
    (dequantized by gguf-py; legacy FFN names repaired by shape; Q/K un-permuted)."""
    import gguf

    cfg = model.config
    sd = {}
    for k, v in fx.hf_state_from_gguf(text_path, cfg.text_config.num_attention_heads,
                                      cfg.text_config.num_key_value_heads).items():
        sd[k if k == "lm_head.weight" else "model.language_model." + k[len("model."):]] = v
    C = cfg.vision_config.hidden_size
    vt, mp = "model.vision_tower.", "model.multi_modal_projector."
    names = {"ln1": "layer_norm1", "ln2": "layer_norm2", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_out": "self_attn.out_proj"}
    tensors = {t.name: t for t in gguf.GGUFReader(mmproj_path).tensors}
    for name, t in tensors.items():
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = torch.from_numpy(np.array(w.reshape(tuple(int(x) for x in reversed(t.shape)))))
        if name == "v.patch_embd.weight":
            sd[vt + "embeddings.patch_embedding.weight"] = w
        elif name == "v.class_embd":
            sd[vt + "embeddings.class_embedding"] = w
        elif name == "v.position_embd.weight":
            sd[vt + "embeddings.position_embedding.weight"] = w
        elif name.startswith("v.pre_ln."):
            sd[vt + "pre_layrnorm." + name.split(".")[-1]] = w
        elif name.startswith("mm."):
            _, i, kind = name.split(".")
            sd[mp + {"0": "linear_1", "2": "linear_2"}[i] + "." + kind] = w
        elif name.startswith("v.blk."):
            _, _, i, part, kind = name.split(".")
            if part in ("ffn_up", "ffn_down"):
                up_is_up = int(tensors[f"v.blk.{i}.ffn_up.weight"].shape[0]) == C  # the up matrix reads C inputs
                fc = {"ffn_up": "fc1", "ffn_down": "fc2"}[part] if up_is_up else {"ffn_up": "fc2", "ffn_down": "fc1"}[part]
                sd[f"{vt}encoder.layers.{i}.mlp.{fc}.{kind}"] = w
            else:
                sd[f"{vt}encoder.layers.{i}.{names[part]}.{kind}"] = w
        else:
            raise AssertionError(f"unexpected mmproj tensor {name}")
    return sd


def with_file_weights(model, text_path, mmproj_path):
    ref = copy.deepcopy(model)
    missing, unexpected = ref.load_state_dict(hf_state_from_files(model, text_path, mmproj_path), strict=False)
    assert not unexpected, unexpected
    # only what the files legitimately leave out: the CLIP layer after the feature layer, post-LN
    n = LLAVA["vision_layers"] - 1
    assert all(f"encoder.layers.{n}." in k or "post_layernorm" in k or "rotary" in k for k in missing), missing
    return ref


# ---------------------------------------------------------------------------------------------
# image features and prompt logits (our converter, F32 files, F32 cache)


@pytest.mark.parametrize("name", ["square", "tall", "wide"])
def test_image_features_match_hf(hf_llava, ours, name):
    model, proc = hf_llava
    img = images()[name]
    px = proc(images=img, text="<image>", return_tensors="pt").pixel_values  # HF's CLIP processor: crop mode
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=px).pooler_output[0].float().numpy()
    m = ac.Model(ours[0], mmproj=ours[1], image_mode="crop", kv_type="f32")
    got = m.encode_image(img)
    assert got.shape == ref.shape == (m.n_image_tokens(), model.config.text_config.hidden_size)
    err = rel_err(got, ref)
    print(f"{name}: image feature relative error {err:.2e}")
    assert err <= 1e-4


@pytest.mark.parametrize("name", ["square", "tall"])
def test_prompt_logits_match_hf(hf_llava, ours, name):
    model, proc = hf_llava
    ids, px = hf_inputs(proc, images()[name])
    ref = hf_logits(model, ids, px)
    m = ac.Model(ours[0], mmproj=ours[1], image_mode="crop", kv_type="f32")
    assert m.image_token_id == model.config.image_token_index
    got = m.logits(ids, images=[images()[name]])
    err = rel_err(got, ref)
    print(f"{name}: relative logit error {err:.2e}")
    assert err <= 1e-4


def test_two_images_in_one_prompt(hf_llava, ours):
    model, proc = hf_llava
    a, b = images()["square"], images()["wide"]
    text = "USER: <image>\nand<image>\nWhich differs? ASSISTANT:"
    enc = proc(images=[a, b], text=text, return_tensors="pt")
    ids = enc.input_ids[0].tolist()
    ref = hf_logits(model, ids, enc.pixel_values)
    m = ac.Model(ours[0], mmproj=ours[1], image_mode="crop", kv_type="f32")
    assert rel_err(m.logits(ids, images=[a, b]), ref) <= 1e-4
    # generate() builds the same sequence from the same prompt
    assert m.build_prompt("<image>\nand<image>\nWhich differs?", 2) == ids


def test_build_prompt_equals_hf_processor(hf_llava, ours):
    model, proc = hf_llava
    m = ac.Model(ours[0], mmproj=ours[1])
    for q in ["What colour is the star?", "  two  spaces and ü", "how many?\nNew line"]:
        ids = proc(images=images()["square"], text=f"USER: <image>\n{q} ASSISTANT:").input_ids[0]
        assert m.build_prompt(q, 1) == list(ids)  # markers placed first, LLaVA-1.5 template
        assert m.build_prompt(f"<image>\n{q}", 1) == list(ids)


def test_pad_mode_uses_hf_pad_preprocessing(hf_llava, ours):
    """image_mode='pad' equals HF's LlavaImageProcessor with do_pad=True (the original LLaVA-1.5)."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    model, proc = hf_llava
    ip = proc.image_processor
    pad = LlavaImageProcessorPil(do_pad=True, size=ip.size, crop_size=ip.crop_size, image_mean=ip.image_mean,
                                 image_std=ip.image_std, resample=ip.resample)
    img = images()["tall"]
    px = pad(images=img, return_tensors="pt").pixel_values
    with torch.no_grad():
        ref = model.get_image_features(pixel_values=px).pooler_output[0].float().numpy()
    got = ac.Model(ours[0], mmproj=ours[1], image_mode="pad").encode_image(img)
    assert rel_err(got, ref) <= 1e-4
    crop = ac.Model(ours[0], mmproj=ours[1], image_mode="crop").encode_image(img)
    assert rel_err(crop, ref) > 1e-2  # the two modes really differ on a non-square image


# ---------------------------------------------------------------------------------------------
# files made by llama.cpp's converters (legacy LLaVA mmproj)


def llava_paths(converted, name):
    res = converted[1][name]
    res = list(res)
    text = next(p for p in res if "mmproj" not in os.path.basename(str(p)))
    mm = next(p for p in res if "mmproj" in os.path.basename(str(p)))
    return str(text), str(mm)


@pytest.mark.parametrize("name,tol", [("square", 1e-4), ("tall", 2e-2)])
def test_llamacpp_legacy_files_match_hf(converted, hf_llava, name, tol):
    """llama.cpp's text GGUF + legacy mmproj (n-1 layers, swapped FFN names): logits equal HF run
    with exactly the weights in the files (F16 where the legacy script writes F16)."""
    model, proc = hf_llava
    text, mm = llava_paths(converted, "llava-f32")
    info = ac.gguf_info(mm)
    assert info.metadata["clip.vision.block_count"] == LLAVA["vision_layers"] - 1
    ids, px = hf_inputs(proc, images()[name])
    m = ac.Model(text, mmproj=mm, image_mode="crop", kv_type="f32")
    got = m.logits(ids, images=[images()[name]])
    ref = hf_logits(with_file_weights(model, text, mm), ids, px)
    err = rel_err(got, ref)
    plain = rel_err(got, hf_logits(model, ids, px))
    print(f"llama.cpp files, {name}: relative logit error {err:.2e} vs HF with the files' weights, "
          f"{plain:.2e} vs the original HF weights")
    assert err <= tol


def test_llamacpp_quantized_pair_runs(converted, hf_llava):
    """A q8_0 text model with an f16 mmproj (the common pairing) tracks HF closely."""
    model, proc = hf_llava
    text, mm = llava_paths(converted, "llava-q8_0")
    ids, px = hf_inputs(proc, images()["square"])
    m = ac.Model(text, mmproj=mm, image_mode="crop", kv_type="f32")
    ref = hf_logits(with_file_weights(model, text, mm), ids, px)
    with kernel_table("reference"):
        assert rel_err(m.logits(ids, images=[images()["square"]]), ref) <= 1e-4
    assert rel_err(m.logits(ids, images=[images()["square"]]), ref) <= ACT_Q8_REL_ERR  # 8-bit activations


def test_feature_layer_key_selects_hidden_states(hf_llava, ours, tmp_path):
    """An mmproj with all CLIP layers and clip.vision.feature_layer picks the listed hidden state."""
    from gguf import GGUFValueType as VT
    from transformers import LlavaForConditionalGeneration

    model, proc = hf_llava
    img = images()["square"]
    px = proc(images=img, text="<image>", return_tensors="pt").pixel_values
    # hidden_states[1] (the output of CLIP layer 0) with a 2-layer file: HF vision_feature_layer -2 of 2 layers
    path = fx.rewrite_gguf(ours[1], str(tmp_path / "fl.gguf"),
                           kv={"clip.vision.feature_layer": ([1], VT.ARRAY, VT.INT32)})
    ref_model = copy.deepcopy(model)
    ref_model.config.vision_feature_layer = -3  # of 3 layers: hidden_states[1]
    with torch.no_grad():
        ref = ref_model.get_image_features(pixel_values=px, vision_feature_layer=-3).pooler_output[0].numpy()
    got = ac.Model(ours[0], mmproj=path, image_mode="crop").encode_image(img)
    assert rel_err(got, ref) <= 1e-4
    assert isinstance(ref_model, LlavaForConditionalGeneration)


# ---------------------------------------------------------------------------------------------
# generation, CLI, errors


def test_generate_with_image(hf_llava, ours, tmp_path):
    from PIL import Image

    model, proc = hf_llava
    img = images()["tall"]
    m = ac.Model(ours[0], mmproj=ours[1], image_mode="crop", kv_type="f32")
    q = "What colour is the star?"
    r = m.generate(img, q, max_tokens=16)
    ids = m.build_prompt(q, 1)
    assert r.stats.n_images == 1 and r.stats.n_visual == m.n_image_tokens() and r.stats.n_prompt == len(ids)
    assert r.stats.image_encode_ms > 0
    # each greedy step is HF's argmax for the same history, where HF's margin is clear
    px = proc(images=img, text="<image>", return_tensors="pt").pixel_values
    ref = hf_logits(model, ids + r.tokens, px)[len(ids) - 1: len(ids) - 1 + len(r.tokens)]
    for i, (tok, row) in enumerate(zip(r.tokens, ref)):
        top2 = np.sort(row)[-2:]
        if top2[1] - top2[0] > 1e-3 * (row.max() - row.min()):
            assert tok == int(row.argmax()), f"step {i}"
    # a path, a PIL image and the array give the same answer; so does the CLI
    png = tmp_path / "img.png"
    Image.fromarray(img).save(png)
    assert m.generate(str(png), q, max_tokens=16).tokens == r.tokens
    assert m.generate(Image.open(png), q, max_tokens=16).tokens == r.tokens
    cli = subprocess.run(["aircache-cli", "-m", ours[0], "--mmproj", ours[1], "--image", str(png), "-p", q, "-n", "16",
                          "--kv-type", "f32", "--image-mode", "crop"], capture_output=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.decode() == r.text + "\n"  # bytes: text mode would turn a generated \r into \n
    assert "images         1 images" in cli.stderr.decode()


def test_errors(ours, tiny_llava, tmp_path, spm_model):
    from hf_llava_fixtures import make_tiny_llava

    text, mm = ours
    m = ac.Model(text, mmproj=mm)
    with pytest.raises(ac.InputError, match="without an mmproj"):
        ac.Model(text).generate(images()["square"], "hi")
    with pytest.raises(ac.InputError, match="2 image markers .* but 1 images"):
        m.generate(images()["square"], "<image> and <image>")
    with pytest.raises(ac.InputError, match="uint8"):
        m.generate(np.zeros((8, 8, 3), np.float32), "hi")
    with pytest.raises(ac.InputError):
        m.generate(np.zeros((0, 8, 3), np.uint8), "hi")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ac.Error):
        m.generate(str(bad), "hi")
    with pytest.raises(FileNotFoundError):
        m.generate(str(tmp_path / "missing.png"), "hi")
    with pytest.raises(ac.InputError, match="longer than the context"):
        ac.Model(text, mmproj=mm, n_ctx=20).generate(images()["square"], "hi")
    with pytest.raises(ac.InputError, match="image positions"):
        m.logits([1, 2, 3], images=[images()["square"]])
    with pytest.raises(ac.InputError, match="not an mmproj"):
        ac.Model(text, mmproj=text)
    with pytest.raises(ac.UnsupportedError, match="mmproj"):
        ac.Model(mm)
    # an mmproj projecting to another width than the text model's n_embd
    d = tmp_path / "other"
    make_tiny_llava(str(d), spm_model, seed=3, **dict(LLAVA, text_hidden=48))
    _, other_mm = conv.convert_llava(str(d), str(tmp_path / "t48.gguf"), str(tmp_path / "m48.gguf"), "f32")
    with pytest.raises(ac.InputError, match="projects to 48 dimensions but the text model .* has n_embd 64"):
        ac.Model(text, mmproj=other_mm)
    r = subprocess.run(["aircache-cli", "-m", text, "--image", str(bad), "-p", "x"], capture_output=True, text=True)
    assert r.returncode == 2 and "--image needs --mmproj" in r.stderr
    r = subprocess.run(["aircache-cli", "-m", text, "--mmproj", mm, "--image", str(bad), "-p", "x"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "bad.png" in r.stderr


def test_model_options(ours, capfd):
    text, mm = ours
    m = ac.Model(text, mm, 512, 1, 64, "f32", "crop")  # the documented positional order
    assert m.n_ctx == 512 and m.has_vision and m.n_image_tokens() == (LLAVA["image_size"] // LLAVA["patch"]) ** 2
    capfd.readouterr()
    ac.Model(text, mmproj=mm)  # quiet by default
    assert capfd.readouterr().err == ""
    ac.Model(text, mmproj=mm, verbose=True)
    err = capfd.readouterr().err
    assert "aircache: model" in err and "projector mlp" in err and "KV cache f16 x 4096 positions" in err
    assert m.generate(images()["square"], "hi", max_tokens=2, kv_policy="full", kv_budget=1.0).stats.n_generated == 2
    r = m.generate(images()["square"], "hi", max_tokens=2, kv_policy="aircache", kv_budget=0.25)
    assert r.stats.kv_bytes_after < r.stats.kv_bytes_before
    with ac.Model(text, mmproj=mm) as m2:
        assert m2.has_vision
