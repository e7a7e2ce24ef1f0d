"""armini.tokenizers: the protocol, its checker, and the palette as the first tokenizer."""
import pytest
import torch

from armini.nn.palette import Palette
from armini.tokenizers import Tokenizer, check_tokenizer


def rgb_images(n=4, levels=256, seed=0):
    return torch.randint(levels, (n, 3, 5, 6), generator=torch.Generator().manual_seed(seed))


def test_the_palette_is_a_tokenizer():
    images = rgb_images()
    palette = Palette.fit(images, n_colors=8)
    assert isinstance(palette, Tokenizer)
    tokens = check_tokenizer(palette, images)
    assert tokens.shape == (4, 1, 5, 6) and palette.codebook_size == 8
    assert int(tokens.max()) < 8


class Broken:
    codebook_size, levels = 4, 256

    def token_shape(self, image_shape):
        return (1,) + tuple(image_shape[1:])

    def encode(self, images):
        return torch.full((len(images), 1) + images.shape[2:], 7)  # out of the codebook

    def decode(self, tokens):
        return torch.zeros(len(tokens), 3, *tokens.shape[2:], dtype=torch.long)


def test_check_tokenizer_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, codebook_size=4\)"):
        check_tokenizer(Broken(), rgb_images())

    class FloatDecode(Broken):
        def encode(self, images):
            return torch.zeros((len(images), 1) + images.shape[2:], dtype=torch.long)

        def decode(self, tokens):
            return torch.zeros(len(tokens), 3, *tokens.shape[2:])

    with pytest.raises(ValueError, match="decode must return integer images"):
        check_tokenizer(FloatDecode(), rgb_images())

    class NoDecode:
        codebook_size, levels = 4, 256

    with pytest.raises(TypeError, match="lacks token_shape, encode, decode"):
        check_tokenizer(NoDecode(), rgb_images())
    assert not isinstance(NoDecode(), Tokenizer)


def test_psnr_by_depth_is_the_psnr_of_each_truncated_reconstruction():
    """psnr_by_depth(tok, x)[t - 1] is the mean over images of 10 log10(1 / MSE) of decode(first t stacks),
    pixels scaled to [0, 1], in batches of any size; one number per stack."""
    from armini.tokenizers import VQVAE, psnr_by_depth

    torch.manual_seed(0)
    tok = VQVAE(image_shape=(1, 8, 8), levels=16, latent_size=2, quantizer="rvq", codebook_size=4, depth=3).eval()
    x = torch.randint(0, 16, (7, 1, 8, 8))
    with torch.no_grad():
        z = tok.encode(x)  # (7, 3, 2, 2)
        expected = []
        for t in (1, 2, 3):
            mse = ((tok.decode(z[:, :t]).float() - x.float()) / 15).square().flatten(1).mean(1)
            expected.append(float((10 * torch.log10(1 / mse)).mean()))
    assert psnr_by_depth(tok, x, batch_size=3) == pytest.approx(expected, abs=1e-5)
    assert len(psnr_by_depth(tok, x)) == 3
