"""Which CUDA kernel the op picks (host-side rules; no GPU needed)."""

from fx_fuse import _cuda


def test_patch_kernel_size_rule():
    sms = 132
    # the headline: 128 images of 126 x 126 output pixels, 128 channels
    assert _cuda._patch_pays(128 * 126 * 126, 128, sms)
    # ResNet layers at batch 32: 64 channels (half-empty tiles), too few tiles
    assert not _cuda._patch_pays(32 * 56 * 56, 64, sms)
    assert not _cuda._patch_pays(32 * 14 * 14, 256, sms)
    # the threshold: 4 tiles of 256 pixels x 128 channels per SM
    assert _cuda._patch_pays(4 * sms * 256, 128, sms)
    assert not _cuda._patch_pays((4 * sms - 1) * 256, 128, sms)
    assert _cuda._patch_pays(2 * sms * 256, 256, sms)


def test_patch_kernel_can_be_disabled(monkeypatch):
    monkeypatch.delenv("FX_FUSE_DISABLE_PATCH", raising=False)
    assert _cuda._patch_enabled()
    monkeypatch.setenv("FX_FUSE_DISABLE_PATCH", "1")
    assert not _cuda._patch_enabled()
