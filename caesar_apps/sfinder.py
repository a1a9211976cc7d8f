"""sfinder: find compact sources in a 2-D astronomical FITS image.

Pipeline:
  load_image           first HDU holding a 2-D image; degenerate axes (e.g. the
                       (1, 1, N, M) of radio cubes) are squeezed; celestial WCS if any.
  estimate_background  photutils Background2D on a --boxsize mesh: 3-sigma clipped
                       median level and standard-deviation rms, interpolated per pixel.
  detect               hysteresis thresholding of the background-subtracted image:
                       islands are connected regions (8-connectivity) above
                       --mergethr x rms with at least --npixmin pixels, kept only if
                       their peak reaches --seedthr x rms.  With --deblend islands are
                       split by multi-threshold deblending and each part must pass the
                       same two tests.
  measure              moments of every source (photutils SourceCatalog).

Outputs in --outdir, named from the input file stem:
  <stem>_catalog.csv   id, x, y, ra, dec, flux, peak, npix, snr, a, b, theta, bkg, rms
  <stem>_sources.reg   DS9 regions, image coordinates (1-based), ellipses at 2 sigma
  <stem>_preview.png   zscale/asinh view of the image with the sources drawn

Catalogue columns: x, y are the 0-based pixel centroid; ra, dec in degrees in the
frame of the header's celestial WCS (empty without one); flux is the
background-subtracted pixel sum over the source, divided by the beam area in pixels
when the header has BMAJ/BMIN (so Jy for a Jy/beam map); peak is the highest
background-subtracted pixel; snr = peak / local rms; a, b are the 1-sigma semi-axes
in pixels and theta the major-axis angle in degrees counter-clockwise from +x; bkg
and rms are the background level and noise at the peak pixel.

Exit status: 0 on success (also when nothing is found), 2 on unusable input or
arguments, 1 when the outputs cannot be written.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import inspect
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import SigmaClip, sigma_clipped_stats
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from photutils.background import Background2D, MedianBackground, StdBackgroundRMS
from photutils.segmentation import SegmentationImage, SourceCatalog, deblend_sources, detect_sources
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage

# photutils < 2 (Debian 12 ships 1.6) names Background2D's rms keyword without the underscore.
RMS_KEYWORD = ("bkg_rms_estimator" if "bkg_rms_estimator" in inspect.signature(Background2D).parameters
               else "bkgrms_estimator")

COLUMNS = ("id", "x", "y", "ra", "dec", "flux", "peak", "npix", "snr", "a", "b", "theta", "bkg", "rms")
FORMATS = {"x": "{:.3f}", "y": "{:.3f}", "ra": "{:.7f}", "dec": "{:.7f}", "theta": "{:.2f}"}
REGION_NSIGMA = 2.0  # region/preview ellipses are drawn at this many sigma
IMAGE_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


class InputError(Exception):
    """The input cannot be used: missing, not FITS, or without a 2-D image."""


@dataclass
class Image:
    data: np.ndarray   # float64, NaN where blank
    header: fits.Header
    wcs: WCS | None    # 2-D celestial WCS matching data's axes, or None
    hdu: int


@dataclass
class Background:
    level: np.ndarray
    rms: np.ndarray
    median: float
    rms_median: float
    box: int


def load_image(path: Path) -> Image:
    """Read the first 2-D (after squeezing length-1 axes) image HDU of a FITS file."""
    if not path.is_file():
        raise InputError(f"input {'is not a file' if path.exists() else 'file not found'}: {path}")
    try:
        with fits.open(path, memmap=False) as hdul:
            for index, hdu in enumerate(hdul):  # noqa: B007  (index: the HDU found, read after the break)
                if not isinstance(hdu, IMAGE_HDUS) or hdu.data is None:
                    continue
                keep = [i for i, n in enumerate(hdu.data.shape) if n > 1]
                if len(keep) != 2:
                    continue
                data = np.asarray(hdu.data, dtype=np.float64).reshape([hdu.data.shape[i] for i in keep])
                header = hdu.header.copy()
                wcs = _celestial_wcs(header, hdu.data.ndim, keep)
                break
            else:
                raise InputError(f"no 2-D image found in {path}")
    except InputError:
        raise
    except Exception as exc:  # astropy raises OSError/ValueError/... for non-FITS or corrupt files
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(f"cannot read {path} as FITS: {reason}") from None
    if not np.isfinite(data).any():
        raise InputError(f"image in {path} has no finite pixels")
    return Image(data, header, wcs, index)


def _celestial_wcs(header: fits.Header, ndim: int, keep: list[int]) -> WCS | None:
    """The header's celestial WCS if its two axes are the image's non-degenerate ones."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            fits_axes = sorted(ndim - 1 - i for i in keep)  # numpy axis i is FITS axis ndim-1-i
            if sorted((wcs.wcs.lng, wcs.wcs.lat)) != fits_axes:
                return None
            return wcs.celestial
    except Exception as exc:  # malformed WCS keywords: carry on without sky coordinates
        print(f"sfinder: warning: ignoring unusable WCS ({exc})", file=sys.stderr)
        return None


def beam_area_pixels(image: Image) -> float | None:
    """Gaussian beam area in pixels from BMAJ/BMIN (degrees), or None if unknown."""
    try:
        bmaj, bmin = float(image.header["BMAJ"]), float(image.header["BMIN"])
    except (KeyError, TypeError, ValueError):
        return None
    if image.wcs is None or not (bmaj > 0 and bmin > 0):
        return None
    dx, dy = proj_plane_pixel_scales(image.wcs)
    return math.pi / (4 * math.log(2)) * bmaj * bmin / (dx * dy)


def estimate_background(data: np.ndarray, boxsize: int) -> Background:
    """Sigma-clipped background level and rms maps on a mesh of boxsize pixels."""
    blank = ~np.isfinite(data)
    side = min(data.shape)
    box = boxsize if boxsize <= side else max(side // 4, min(side, 8))

    def mesh(values: np.ndarray) -> Background2D:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            return Background2D(values, box, mask=blank, filter_size=3,
                                sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
                                bkg_estimator=MedianBackground(), **{RMS_KEYWORD: StdBackgroundRMS()})
    try:
        level = np.asarray(mesh(data).background)
        # rms from the residual, so that gradients inside a box do not inflate it
        rms = np.asarray(mesh(data - level).background_rms)
    except ValueError:  # too few unmasked pixels per box: use one global estimate
        _, median, std = sigma_clipped_stats(data[~blank], sigma=3.0, maxiters=10)
        level, rms = np.full(data.shape, median), np.full(data.shape, std)
    good = ~blank
    return Background(level, rms, float(np.median(level[good])), float(np.median(rms[good])), box)


def detect(residual: np.ndarray, rms: np.ndarray, seedthr: float, mergethr: float,
           npixmin: int, deblend: bool = False) -> SegmentationImage | None:
    """Segment the background-subtracted image; None when no source passes."""
    blank = ~np.isfinite(residual)
    clean = np.where(blank, 0.0, residual)
    snr = np.divide(clean, rms, out=np.zeros_like(clean), where=rms > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)
        warnings.simplefilter("ignore", AstropyWarning)
        segm = detect_sources(snr, mergethr, npixmin, mask=blank)
        segm = _keep_seeded(segm, snr, seedthr)
        if segm is not None and deblend:
            segm = deblend_sources(clean, segm, npixmin, contrast=0.001, progress_bar=False)
            segm = _keep_seeded(segm, snr, seedthr)
    return segm


def _keep_seeded(segm: SegmentationImage | None, snr: np.ndarray, seedthr: float) -> SegmentationImage | None:
    """Drop segments whose highest pixel is below seedthr sigma; relabel 1..n."""
    if segm is None:
        return None
    peaks = np.asarray(ndimage.maximum(snr, labels=segm.data, index=segm.labels))
    keep = segm.labels[peaks >= seedthr]
    if keep.size == 0:
        return None
    segm.keep_labels(keep, relabel=True)
    return segm


def _prop(cat: SourceCatalog, name: str, old: str) -> np.ndarray:
    """A catalogue column by its photutils >= 3 name, or the older one."""
    value = getattr(cat, name) if hasattr(type(cat), name) else getattr(cat, old)
    return np.atleast_1d(getattr(value, "value", value))


def measure(residual: np.ndarray, segm: SegmentationImage | None, bkg: Background,
            wcs: WCS | None = None, beam: float | None = None) -> list[dict]:
    """One dict per source with the catalogue COLUMNS."""
    if segm is None:
        return []
    blank = ~np.isfinite(residual)
    cat = SourceCatalog(np.where(blank, 0.0, residual), segm, mask=blank)
    x, y = _prop(cat, "x_centroid", "xcentroid"), _prop(cat, "y_centroid", "ycentroid")
    xi = _prop(cat, "max_value_xindex", "maxval_xindex").astype(int)
    yi = _prop(cat, "max_value_yindex", "maxval_yindex").astype(int)
    flux = _prop(cat, "segment_flux", "segment_flux") / (beam or 1.0)
    peak, npix = _prop(cat, "max_value", "max_value"), _prop(cat, "area", "area")
    a, b = _prop(cat, "semimajor_axis", "semimajor_sigma"), _prop(cat, "semiminor_axis", "semiminor_sigma")
    theta = _prop(cat, "orientation", "orientation") % 180.0
    ra = dec = np.full(x.shape, np.nan)
    if wcs is not None:
        world = wcs.pixel_to_world_values(x, y)
        ra, dec = np.atleast_1d(world[wcs.wcs.lng]), np.atleast_1d(world[wcs.wcs.lat])
    local_rms, local_bkg = bkg.rms[yi, xi], bkg.level[yi, xi]
    snr = np.divide(peak, local_rms, out=np.full(peak.shape, np.inf), where=local_rms > 0)
    columns = (np.arange(1, x.size + 1), x, y, ra, dec, flux, peak, npix.astype(int), snr, a, b, theta,
               local_bkg, local_rms)
    return [dict(zip(COLUMNS, values, strict=True)) for values in zip(*columns, strict=True)]


def _format(column: str, value: object) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    return "" if not math.isfinite(value) else FORMATS.get(column, "{:.6g}").format(value)


def write_catalog(rows: list[dict], path: Path) -> None:
    """CSV with a header row and one row per source."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_format(c, row[c]) for c in COLUMNS])


def _has_shape(row: dict) -> bool:
    return all(math.isfinite(row[k]) and row[k] > 0 for k in ("a", "b"))


def write_regions(rows: list[dict], path: Path, source: str = "") -> None:
    """DS9 region file in 1-based image coordinates, one labelled shape per source."""
    lines = ["# Region file format: DS9 version 4.1", f"# caesar sfinder sources of {source}",
             'global color=green width=1 font="helvetica 9 normal roman"', "image"]
    for row in rows:
        x, y, label = row["x"] + 1, row["y"] + 1, f"# text={{{row['id']}}}"
        if _has_shape(row):
            a, b = REGION_NSIGMA * row["a"], REGION_NSIGMA * row["b"]
            lines.append(f"ellipse({x:.3f},{y:.3f},{a:.3f},{b:.3f},{row['theta']:.2f}) {label}")
        else:
            lines.append(f"circle({x:.3f},{y:.3f},2.000) {label}")
    path.write_text("\n".join(lines) + "\n")


def write_preview(data: np.ndarray, rows: list[dict], path: Path, title: str = "") -> None:
    """PNG of the image (zscale limits, asinh stretch) with the sources outlined."""
    from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    ny, nx = data.shape
    fig = Figure(figsize=(8, min(max(8 * ny / nx, 3), 16)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    vmin, vmax = ZScaleInterval().get_limits(data[np.isfinite(data)])
    norm = ImageNormalize(vmin=vmin, vmax=max(vmax, vmin + 1e-12), stretch=AsinhStretch())
    ax.imshow(data, origin="lower", cmap="gray", norm=norm, interpolation="nearest")
    for row in rows:
        w, h = (2 * REGION_NSIGMA * row["a"], 2 * REGION_NSIGMA * row["b"]) if _has_shape(row) else (4, 4)
        ax.add_patch(Ellipse((row["x"], row["y"]), w, h, angle=row["theta"] if _has_shape(row) else 0,
                             fill=False, edgecolor="lime", linewidth=0.8))
        ax.annotate(str(row["id"]), (row["x"] + w / 2, row["y"] + h / 2), xytext=(2, 2),
                    textcoords="offset points", color="yellow", fontsize=8, fontweight="bold")
    ax.set(title=f"{title}: {len(rows)} sources", xlabel="x [pixel]", ylabel="y [pixel]")
    fig.savefig(path, bbox_inches="tight")


def output_stem(path: Path) -> str:
    """File name without .fits/.fit/.fts and a compression suffix."""
    name = path.name
    for suffix in (".gz", ".fz", ".bz2", ".fits", ".fit", ".fts"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="caesar-sfinder", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--inputfile", required=True, help="FITS image (first HDU with 2-D data; length-1 axes squeezed)")
    p.add_argument("--outdir", default=".", help="directory for the catalogue, region file and preview")
    p.add_argument("--seedthr", type=float, default=5.0,
                   help="seed threshold (sigma): a source's peak must reach seedthr x local background rms")
    p.add_argument("--mergethr", type=float, default=2.5,
                   help="merge threshold (sigma): sources grow over connected pixels above mergethr x rms; "
                        "must not exceed --seedthr")
    p.add_argument("--npixmin", type=int, default=5, help="minimum number of connected pixels of a source")
    p.add_argument("--boxsize", type=int, default=64,
                   help="background mesh box size in pixels (smaller images use a quarter of their side)")
    p.add_argument("--deblend", action="store_true", help="split blended sources (multi-threshold deblending)")
    p.add_argument("--no-preview", action="store_true", help="do not write the PNG preview")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already reported by argparse
        return exc.code if isinstance(exc.code, int) else 2
    problem = ("--seedthr must be > 0" if not args.seedthr > 0 else
               "--mergethr must be > 0 and <= --seedthr" if not 0 < args.mergethr <= args.seedthr else
               "--npixmin must be >= 1" if args.npixmin < 1 else
               "--boxsize must be >= 4" if args.boxsize < 4 else None)
    if problem:
        print(f"sfinder: error: {problem}", file=sys.stderr)
        return 2
    if args.deblend and importlib.util.find_spec("skimage") is None:
        print("sfinder: error: --deblend needs scikit-image (pip install scikit-image)", file=sys.stderr)
        return 2
    inputfile = Path(args.inputfile)
    try:
        image = load_image(inputfile)
    except InputError as exc:
        print(f"sfinder: error: {exc}", file=sys.stderr)
        return 2

    bkg = estimate_background(image.data, args.boxsize)
    residual = image.data - bkg.level
    segm = detect(residual, bkg.rms, args.seedthr, args.mergethr, args.npixmin, args.deblend)
    rows = measure(residual, segm, bkg, image.wcs, beam_area_pixels(image))

    outdir, stem = Path(args.outdir), output_stem(inputfile)
    outputs = [outdir / f"{stem}_catalog.csv", outdir / f"{stem}_sources.reg"]
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        write_catalog(rows, outputs[0])
        write_regions(rows, outputs[1], inputfile.name)
        if not args.no_preview:
            outputs.append(outdir / f"{stem}_preview.png")
            write_preview(image.data, rows, outputs[2], inputfile.name)
    except OSError as exc:
        print(f"sfinder: error: cannot write outputs to {outdir}: {exc}", file=sys.stderr)
        return 1

    ny, nx = image.data.shape
    print(f"sfinder: {inputfile.name} HDU {image.hdu} {nx}x{ny} px, background median {bkg.median:.6g}, "
          f"rms {bkg.rms_median:.6g} (box {bkg.box} px)")
    print(f"sfinder: {len(rows)} sources (seed {args.seedthr:g} sigma, merge {args.mergethr:g} sigma, "
          f"npixmin {args.npixmin}, deblend {'on' if args.deblend else 'off'})")
    print("sfinder: wrote " + ", ".join(str(p) for p in outputs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
