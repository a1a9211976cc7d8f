"""Synthetic FITS images with Gaussian sources at known positions, for the app tests."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

Source = tuple[float, float, float, float]  # (x, y, peak, sigma): 0-based pixel centre, image units, pixels

CRVAL = (150.0, 2.0)          # RA, Dec (deg) at the reference pixel
PIXEL_DEG = 1.0 / 3600.0      # 1 arcsec pixels


def default_sources() -> list[Source]:
    """Eight well-separated sources (>= 60 px apart) with peaks of 20-100 on a 256x256 image."""
    return [
        (40.3, 42.7, 20.0, 1.5),
        (128.6, 35.2, 30.0, 2.0),
        (210.1, 50.9, 45.0, 2.5),
        (55.8, 130.4, 60.0, 1.8),
        (150.2, 120.6, 100.0, 2.2),
        (220.7, 140.3, 25.0, 3.0),
        (80.4, 215.5, 80.0, 2.0),
        (190.9, 210.1, 40.0, 1.6),
    ]


def make_wcs_header(shape: tuple[int, int], cube: bool = False) -> fits.Header:
    """A simple RA---TAN/DEC--TAN header centred on the image (plus FREQ/STOKES when cube)."""
    ny, nx = shape
    h = fits.Header()
    h.update({"CTYPE1": "RA---TAN", "CRPIX1": nx / 2 + 0.5, "CRVAL1": CRVAL[0], "CDELT1": -PIXEL_DEG, "CUNIT1": "deg",
              "CTYPE2": "DEC--TAN", "CRPIX2": ny / 2 + 0.5, "CRVAL2": CRVAL[1], "CDELT2": PIXEL_DEG, "CUNIT2": "deg"})
    h["RADESYS"], h["EQUINOX"] = "ICRS", 2000.0
    if cube:
        h["CTYPE3"], h["CRPIX3"], h["CRVAL3"], h["CDELT3"], h["CUNIT3"] = "FREQ", 1.0, 1.4e9, 1.0e6, "Hz"
        h["CTYPE4"], h["CRPIX4"], h["CRVAL4"], h["CDELT4"] = "STOKES", 1.0, 1.0, 1.0
    return h


def render(sources: Sequence[Source], shape: tuple[int, int] = (256, 256), noise: float = 1.0,
           background: float = 10.0, gradient: float = 0.0, seed: int = 0) -> np.ndarray:
    """Background (+ gradient per pixel along x) + circular Gaussians + Gaussian noise."""
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    image = background + gradient * x
    for sx, sy, peak, sigma in sources:
        image = image + peak * np.exp(-((x - sx) ** 2 + (y - sy) ** 2) / (2.0 * sigma**2))
    if noise > 0:
        image = image + np.random.default_rng(seed).normal(0.0, noise, shape)
    return image


def make_image(path: str | Path, sources: Sequence[Source] | None = None, shape: tuple[int, int] = (256, 256),
               noise: float = 1.0, background: float = 10.0, seed: int = 0, wcs: bool = True,
               gradient: float = 0.0, cube: bool = False, header: dict | None = None) -> Path:
    """Write a synthetic image and return its path.

    sources: (x, y, peak, sigma) tuples, 0-based pixel positions, peak in image units
    (= sigma of the noise for the default noise=1.0); None means default_sources().
    cube=True writes a (1, 1, ny, nx) radio-style cube; header adds extra cards (e.g. BMAJ).
    """
    path = Path(path)
    data = render(default_sources() if sources is None else sources, shape, noise, background, gradient, seed)
    hdr = make_wcs_header(shape, cube) if wcs else fits.Header()
    hdr["BUNIT"] = "JY/BEAM"
    for key, value in (header or {}).items():
        hdr[key] = value
    if cube:
        data = data.reshape((1, 1, *shape))
    fits.PrimaryHDU(data.astype(np.float32), header=hdr).writeto(path, overwrite=True)
    return path
