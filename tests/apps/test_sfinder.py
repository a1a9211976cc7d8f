"""Real end-to-end runs of the sfinder source finder on synthetic FITS images."""
from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from caesar_apps import sfinder
from tests.apps.fitsgen import default_sources, make_image, render

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_catalog(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert set(sfinder.COLUMNS) <= set(reader.fieldnames or [])
        return list(reader)


def region_shapes(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith(("ellipse(", "circle("))]


def assert_matches(rows: list[dict], truth: list[tuple], tol: float = 1.0) -> None:
    """One-to-one match within tol pixels: nothing missed, nothing spurious."""
    found = np.array([[float(r["x"]), float(r["y"])] for r in rows]).reshape(-1, 2)
    true = np.array([[s[0], s[1]] for s in truth]).reshape(-1, 2)
    assert len(found) == len(true), f"found {len(found)} sources, expected {len(true)}"
    dist = np.hypot(found[:, None, 0] - true[None, :, 0], found[:, None, 1] - true[None, :, 1])
    assert (dist.min(axis=0) < tol).all(), f"missed sources: {true[dist.min(axis=0) >= tol]}"
    assert (dist.min(axis=1) < tol).all(), f"spurious sources: {found[dist.min(axis=1) >= tol]}"
    assert len(set(dist.argmin(axis=1))) == len(true)


def run(tmp: Path, image: Path, *extra: str) -> tuple[int, list[dict], Path]:
    outdir = tmp / f"out-{image.stem}"
    code = sfinder.main(["--inputfile", str(image), "--outdir", str(outdir), *extra])
    catalog = outdir / f"{image.stem}_catalog.csv"
    return code, (read_catalog(catalog) if catalog.exists() else []), outdir


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sfinder")
    image = make_image(tmp / "field.fits", gradient=0.01)
    code, rows, outdir = run(tmp, image)
    return image, code, rows, outdir


def test_finds_every_source_and_nothing_else(default_run, capsys):
    _image, code, rows, outdir = default_run
    assert code == 0
    assert_matches(rows, default_sources())
    for row in rows:
        true = min(default_sources(), key=lambda s: math.hypot(s[0] - float(row["x"]), s[1] - float(row["y"])))
        assert abs(float(row["peak"]) - true[2]) < 0.15 * true[2] + 3
        assert float(row["snr"]) > 5 and int(row["npix"]) >= 5
        assert 0.7 * true[3] < float(row["a"]) < 1.4 * true[3]
    assert len(region_shapes(outdir / "field_sources.reg")) == len(rows)
    assert (outdir / "field_preview.png").read_bytes()[:8] == PNG_MAGIC


def test_radec_from_wcs(default_run):
    image, _, rows, _ = default_run
    wcs = WCS(fits.getheader(image))
    for row in (rows[0], rows[-1]):
        sky = wcs.pixel_to_world(float(row["x"]), float(row["y"]))
        assert float(row["ra"]) == pytest.approx(sky.ra.deg, abs=1e-6)
        assert float(row["dec"]) == pytest.approx(sky.dec.deg, abs=1e-6)


def test_cli_subprocess(tmp_path):
    image = make_image(tmp_path / "sub.fits", seed=1)
    outdir = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "caesar_apps.sfinder", "--inputfile", str(image),
                           "--outdir", str(outdir)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "8 sources" in proc.stdout and "rms" in proc.stdout
    files = [outdir / f"sub_{suffix}" for suffix in ("catalog.csv", "sources.reg", "preview.png")]
    assert all(f.is_file() for f in files)
    assert files[2].read_bytes()[:8] == PNG_MAGIC
    rows = read_catalog(files[0])
    assert_matches(rows, default_sources())
    shapes = region_shapes(files[1])
    assert len(shapes) == len(rows) == 8
    assert all("# text={" in s for s in shapes)
    # DS9 positions are 1-based
    first = shapes[0].split("(")[1].split(",")
    assert float(first[0]) == pytest.approx(float(rows[0]["x"]) + 1, abs=1e-3)


def test_pure_noise_finds_nothing(tmp_path):
    image = make_image(tmp_path / "noise.fits", sources=[], seed=2)
    code, rows, outdir = run(tmp_path, image)
    assert code == 0 and rows == []
    assert (outdir / "noise_catalog.csv").read_text().startswith("id,x,y,ra,dec")
    assert region_shapes(outdir / "noise_sources.reg") == []
    assert (outdir / "noise_preview.png").read_bytes()[:8] == PNG_MAGIC


def test_deblend_splits_close_pair(tmp_path):
    pair = [(100.0, 100.0, 50.0, 2.0), (106.0, 100.0, 50.0, 2.0)]
    image = make_image(tmp_path / "pair.fits", sources=pair, seed=3)
    code, rows, _ = run(tmp_path, image, "--no-preview")
    assert code == 0 and len(rows) == 1
    assert abs(float(rows[0]["x"]) - 103.0) < 1
    code, rows, _ = run(tmp_path, image, "--no-preview", "--deblend")
    assert code == 0
    assert_matches(rows, pair)


def test_cube_with_degenerate_axes(tmp_path):
    image = make_image(tmp_path / "cube.fits", cube=True, gradient=0.01)
    assert fits.getdata(image).shape == (1, 1, 256, 256)
    code, rows, _ = run(tmp_path, image, "--no-preview")
    assert code == 0
    assert_matches(rows, default_sources())
    sky = WCS(fits.getheader(image)).celestial.pixel_to_world(float(rows[0]["x"]), float(rows[0]["y"]))
    assert float(rows[0]["ra"]) == pytest.approx(sky.ra.deg, abs=1e-6)
    assert float(rows[0]["dec"]) == pytest.approx(sky.dec.deg, abs=1e-6)


def test_no_wcs_leaves_radec_empty_and_small_image(tmp_path):
    image = make_image(tmp_path / "tiny.fits", sources=[(20.3, 17.6, 30.0, 1.5)], shape=(40, 36), wcs=False)
    code, rows, _ = run(tmp_path, image, "--no-preview")
    assert code == 0
    assert_matches(rows, [(20.3, 17.6)])
    assert rows[0]["ra"] == "" and rows[0]["dec"] == ""


def test_flux_in_jy_with_beam(tmp_path):
    fwhm_deg = 2.0 * math.sqrt(8 * math.log(2)) / 3600.0  # sigma = 2 px of 1 arcsec
    image = make_image(tmp_path / "beam.fits", sources=[(60.0, 70.0, 100.0, 2.0)], shape=(128, 128),
                       header={"BMAJ": fwhm_deg, "BMIN": fwhm_deg, "BPA": 0.0})
    code, rows, _ = run(tmp_path, image, "--no-preview")
    assert code == 0 and len(rows) == 1
    # a beam-sized source of 100 Jy/beam carries 100 Jy; the segment down to 2.5 sigma holds ~97.5 %
    assert 92.0 < float(rows[0]["flux"]) < 103.0


def test_blank_border_and_mergethr_effect():
    data = render(default_sources(), seed=4)
    data[:, :20] = np.nan
    bkg = sfinder.estimate_background(data, 64)
    residual = data - bkg.level
    sizes = {}
    for mergethr in (2.5, 4.0):
        rows = sfinder.measure(residual, sfinder.detect(residual, bkg.rms, 5.0, mergethr, 5), bkg)
        assert_matches(rows, default_sources())
        sizes[mergethr] = sum(r["npix"] for r in rows)
    assert sizes[4.0] < 0.8 * sizes[2.5]


@pytest.mark.parametrize("content, message", [
    (b"this is not a FITS file\n" * 20, "FITS"),
    (None, "not found"),
    ("table", "no 2-D image"),
])
def test_bad_input_exits_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.fits"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "table":
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column(name="a", format="E", array=np.arange(3.0))])]).writeto(path)
    code = sfinder.main(["--inputfile", str(path), "--outdir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_arguments_exit_2(tmp_path, capsys):
    image = tmp_path / "x.fits"
    assert sfinder.main(["--inputfile", str(image), "--seedthr", "3", "--mergethr", "4"]) == 2
    assert "--mergethr" in capsys.readouterr().err
    assert sfinder.main([]) == 2
    assert sfinder.main(["--help"]) == 0
    assert "--deblend" in capsys.readouterr().out
