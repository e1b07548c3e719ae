"""service/imaging.py and service/contact_sheet.py: decoding, the input-size rules, encoders
and sheets."""

import io

import numpy as np
import pytest
from images import png_claiming
from PIL import Image, ImageFile

from service import contact_sheet, imaging
from service.errors import InvalidImage, InvalidParameter, PayloadTooLarge, UnsupportedMedia


def encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# --- imaging: decode and the input-size rules ---------------------------------------------

def test_rule_non_square_is_center_cropped():
    img = Image.fromarray(np.arange(40 * 32 * 3, dtype=np.uint8).reshape(32, 40, 3))
    out, note = imaging.fit_square(img)
    assert out.size == (32, 32) and note == "center-crop 40x32 to 32x32"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img)[:, 4:36])
    assert imaging.fit_square(out) == (out, None)


@pytest.mark.parametrize("side, scale, want", [
    (32, None, 4), (16, None, 8), (8, None, 16),  # the exact LR sizes infer the scale
    (20, 8, 8), (8, 8, 8), (16, 4, 4), (40, 4, 4), (4, 16, 16), (10, 16, 16)])  # within range
def test_rule_scale_resolution(side, scale, want):
    assert imaging.resolve_scale(side, scale, (4, 8, 16)) == want


@pytest.mark.parametrize("side, scale, words", [
    (128, 8, ["larger than x8 takes (8-20 px)", "looks like an HR image", "x4: 16-40 px"]),
    (200, 8, ["worse than the image", "x16: 4-10 px", "the scale is inferred"]),
    (100, 4, ["larger than x4 takes (16-40 px)", "worse than the image"]),
    (41, 4, ["larger than x4 takes"]),
    (1, 8, ["too small for x8 (it takes 8-20 px)", "x16: 4-10 px"]),
    (6, 8, ["too small for x8", "pass ?scale=16 (it takes 4-10 px faces"]),
    (24, 8, ["larger than x8 takes", "pass ?scale=4 (it takes 16-40 px faces"]),
    (500, None, ["cannot infer the scale of a 500x500 face", "x4: 16-40 px"]),
    (20, None, ["cannot infer the scale", "pass ?scale=8 (it takes 8-20 px"]),
    (12, None, ["pass ?scale=8"]),
    (33, None, ["pass ?scale=4 (it takes 16-40 px"]),
])
def test_rule_refusals_say_what_to_send(side, scale, words):
    """Every size refusal says what would be accepted; none tells the user to pass the
    ?scale they passed, or one that would refuse the image too."""
    with pytest.raises(InvalidImage) as err:
        imaging.resolve_scale(side, scale, (4, 8, 16))
    detail = err.value.detail
    assert all(w in detail for w in words), detail
    if scale is not None:
        assert f"?scale={scale}" not in detail, detail


def test_rule_advice_names_only_loaded_scales():
    with pytest.raises(InvalidImage) as err:
        imaging.resolve_scale(30, None, (8, 16))
    assert "x8: 8-20 px, x16: 4-10 px" in err.value.detail and "x4" not in err.value.detail


def test_rule_scale_without_a_model_is_refused():
    with pytest.raises(InvalidParameter, match="no model for scale 16; loaded scales: 8"):
        imaging.resolve_scale(8, None, (8,))


def test_refused_sizes_are_never_decoded(monkeypatch):
    """The scale is settled from the header: a 4000x4000 PNG (16 Mpx, within the pixel limit)
    and a wrong-size reference are refused without decoding any pixel."""
    def no_decoding(self):
        raise AssertionError("decoded")

    big = encoded(Image.new("RGB", (4000, 4000)))
    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InvalidImage, match="larger than x8 takes"):
        imaging.prepare_lr(big, 8, (4, 8, 16), 16_000_000)
    with pytest.raises(InvalidImage, match="cannot infer"):
        imaging.prepare_lr(big, None, (4, 8, 16), 16_000_000)
    with pytest.raises(InvalidImage, match="reference is 4000x4000"):
        imaging.prepare_reference(big, 16_000_000)


def test_rule_explicit_scale_resizes_bicubic():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20, 3), np.uint8))
    out, note = imaging.fit_lr(img, 8)
    assert out.size == (16, 16) and "resize 20x20 to 16x16 (bicubic)" in note
    np.testing.assert_array_equal(np.asarray(out),
                                  np.asarray(img.resize((16, 16), Image.Resampling.BICUBIC)))
    assert imaging.fit_lr(out, 8) == (out, None)


def test_prepare_lr_applies_rules_in_order():
    img = Image.new("RGB", (24, 18), (10, 200, 30))
    lr = imaging.prepare_lr(encoded(img), 8, (4, 8, 16), 10_000)
    assert lr.image.size == (16, 16) and lr.scale == 8
    assert lr.adjustments == ["center-crop 24x18 to 18x18",
                              "resize 18x18 to 16x16 (bicubic) for scale 8"]


def test_decode_modes():
    gray = Image.fromarray(np.full((16, 16), 77, np.uint8))
    img, notes = imaging.decode(encoded(gray), 10_000)
    assert img.mode == "RGB" and np.asarray(img)[0, 0].tolist() == [77, 77, 77] and not notes
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img, notes = imaging.decode(encoded(rgba), 10_000)
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]
    assert notes == ["alpha composited onto white"]
    opaque = Image.new("RGBA", (16, 16), (1, 2, 3, 255))
    img, notes = imaging.decode(encoded(opaque), 10_000)
    assert np.asarray(img)[0, 0].tolist() == [1, 2, 3] and not notes
    deep = Image.fromarray(np.full((16, 16), 65535, np.uint16))
    img, _ = imaging.decode(encoded(deep), 10_000)
    assert np.asarray(img)[0, 0].tolist() == [255, 255, 255]


def test_decode_applies_exif_orientation():
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :16] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encoded(Image.fromarray(arr), "JPEG", exif=exif, quality=100)
    img, notes = imaging.decode(data, 10_000)
    assert img.size == (16, 32) and notes == ["exif-orientation 6 applied"]
    assert np.asarray(img)[:8].mean() > 200 and np.asarray(img)[-8:].mean() < 50


def test_decode_ignores_an_invalid_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 99
    data = encoded(Image.new("RGB", (16, 8), (50, 60, 70)), "JPEG", exif=exif, quality=100)
    img, notes = imaging.decode(data, 10_000)
    assert img.size == (16, 8) and notes == ["exif-orientation 99 ignored (not 1-8)"]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_decode_accepts_the_four_formats(fmt):
    img, _ = imaging.decode(encoded(Image.new("RGB", (8, 8), (9, 9, 9)), fmt), 10_000)
    assert img.size == (8, 8)


@pytest.mark.parametrize("data, error, match", [
    (b"", InvalidImage, "empty"),
    (b"hello, not an image", UnsupportedMedia, "not a PNG"),
    (encoded(Image.new("RGB", (8, 8)), "GIF"), UnsupportedMedia, "not a PNG"),
    (encoded(Image.new("RGB", (8, 8)), "TIFF"), UnsupportedMedia, "not a PNG"),
    (png_claiming(200, 200), PayloadTooLarge, "pixels"),
    (png_claiming(100_000, 100_000), PayloadTooLarge, "decode limit|pixels"),
    (png_claiming(60, 60), InvalidImage, "corrupt or truncated"),
    (encoded(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], InvalidImage, "corrupt|truncated"),
    (encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:400], InvalidImage,
     "truncated"),
    (encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")[:1300], InvalidImage,
     "truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, UnsupportedMedia, "not a PNG"),
])
def test_decode_refuses_bad_files(data, error, match):
    with pytest.raises(error, match=match):
        imaging.decode(data, 10_000)


def test_reference_must_be_128():
    assert imaging.prepare_reference(encoded(Image.new("RGB", (128, 128))), 10**6).shape == (
        128, 128, 3)
    with pytest.raises(InvalidImage, match="exactly 128x128"):
        imaging.prepare_reference(encoded(Image.new("RGB", (64, 64))), 10**6)


def test_encoders_and_sheets():
    frames = np.random.default_rng(0).integers(0, 255, (5, 128, 128, 3), np.uint8)
    for fmt in ("png", "jpeg", "webp"):
        assert Image.open(io.BytesIO(imaging.encode(frames[0], fmt))).format == fmt.upper()
    assert imaging.encode(frames[0], "png") == imaging.encode(frames[0], "png")
    for fmt in ("gif", "webp"):
        anim = Image.open(io.BytesIO(imaging.animation(frames, fmt, 100)))
        assert anim.n_frames == 5 and anim.size == (128, 128)
    assert imaging.strip(frames).size == (5 * 128, 128)


def test_contact_sheet_labels_every_tile():
    images = np.full((3, 128, 128, 3), 128, np.uint8)
    entries = [{"kind": "mean", "draw": None, "psnr": 21.5, "best": False},
               {"kind": "sample", "draw": 1, "psnr": 23.25, "best": True},
               {"kind": "sample", "draw": 0, "psnr": 20.0, "best": False}]
    lr = Image.new("RGB", (16, 16), (255, 0, 0))
    ref = np.zeros((128, 128, 3), np.uint8)
    inputs = contact_sheet.input_tiles(lr, 8, ref, 128)
    results = contact_sheet.result_tiles(images, entries)
    assert [t.lines for t in inputs] == [("LR input 16x16", "x8, shown enlarged"),
                                         ("reference (HR)", "128x128")]
    assert [t.lines for t in results] == [("ICAP mean", "PSNR 21.50 dB"),
                                          ("sample 1 (draw 1)", "PSNR 23.25 dB  best"),
                                          ("sample 2 (draw 0)", "PSNR 20.00 dB")]
    assert np.all(inputs[0].image == (255, 0, 0)) and inputs[0].image.shape == (128, 128, 3)
    sheet = contact_sheet.render([*inputs, *results], cols=3)
    cell_h = 128 + contact_sheet.CAPTION_HEIGHT + contact_sheet.GAP
    assert sheet.size == (3 * 132 + 4, 2 * cell_h + 4)
    assert sheet.getpixel((2, cell_h + 2)) == (0, 170, 0)  # the frame of the best (4th) tile
    caption = np.asarray(sheet)[4 + 128:4 + 128 + contact_sheet.CAPTION_HEIGHT, 4:132]
    assert (caption < 100).any()  # text under the first tile
    unlabelled = contact_sheet.result_tiles(images[:1], [{**entries[0], "psnr": None}])
    assert unlabelled[0].lines == ("ICAP mean", "")
