"""Known answers for the Gomez-Barrero D<->sys re-implementation."""
import numpy as np
import pytest

from faceanonymixer.eval import unlinkability as U

pytestmark = pytest.mark.numerics   # golden / recorded numbers / determinism: .ci/run reruns them on other CPUs' kernels


def _exact_dsys(mu_m, mu_nm, sigma=1.0, omega=1.0):
    """D<->sys of two Gaussians from the formula itself, on a fine grid (no histograms)."""
    s = np.linspace(-12, 12, 400001)
    pm = np.exp(-0.5 * ((s - mu_m) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    pnm = np.exp(-0.5 * ((s - mu_nm) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    wlr = omega * pm / pnm
    d = np.where(wlr > 1, 2 * wlr / (1 + wlr) - 1, 0.0)
    return float(np.trapezoid(pm * d, s))


def test_identical_distributions_near_zero():
    rng = np.random.default_rng(0)
    r = U.dsys(rng.normal(0, 1, 50000), rng.normal(0, 1, 50000))
    assert r.n_bins == 100
    assert 0 <= r.dsys < 0.03


def test_disjoint_distributions_near_one():
    rng = np.random.default_rng(1)
    r = U.dsys(rng.uniform(0.6, 1.0, 5000), rng.uniform(-0.2, 0.3, 5000))
    assert r.dsys > 0.97
    # every bin holding mated scores has an empty non-mated bin: D = 1 there by definition
    assert np.all(r.d_local[r.y_mated > 0] == 1.0)


def test_matches_analytic_gaussians():
    rng = np.random.default_rng(2)
    for mu in (1.0, 2.0):
        exact = _exact_dsys(mu, 0.0)
        est = U.dsys(rng.normal(mu, 1, 200000), rng.normal(0, 1, 200000), n_bins=100).dsys
        assert abs(est - exact) < 0.02, (mu, est, exact)
    assert _exact_dsys(1.0, 0.0) < _exact_dsys(2.0, 0.0)


def test_empty_bin_conventions():
    # mated all in the top bin where non-mated is empty; a middle bin is empty for both (LR := 1 -> D := 1, y1 = 0)
    mated = np.array([0.9, 0.95, 1.0] * 10)
    nonmated = np.array([0.0, 0.05, 0.1] * 10)
    r = U.dsys(mated, nonmated, n_bins=4)
    assert r.d_local.tolist() == [0.0, 1.0, 1.0, 1.0]  # bin 0: LR = 0 -> D = 0; bins 1-3: empty non-mated -> 1
    # trapezoid over centres: the top bin (all mated mass) gets half weight -> Dsys = 0.5 * y1[-1] * width
    width = r.bin_centers[1] - r.bin_centers[0]
    assert r.dsys == pytest.approx(0.5 * r.y_mated[-1] * width)


def test_omega_and_defaults():
    rng = np.random.default_rng(3)
    m, nm = rng.normal(1, 1, 3000), rng.normal(0, 1, 3000)
    assert U.dsys(m, nm, omega=4.0).dsys > U.dsys(m, nm, omega=1.0).dsys
    assert U.default_bins(30) == 3 and U.default_bins(10) == 2 and U.default_bins(10**6) == 100
    assert U.dsys([0.5] * 20, [0.5] * 20).dsys == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError):
        U.dsys([], [1.0])


def test_plot_writes_png(tmp_path):
    rng = np.random.default_rng(4)
    r = U.dsys(rng.normal(1, 1, 500), rng.normal(0, 1, 500))
    U.plot(r, tmp_path / "u.png", title="test")
    assert (tmp_path / "u.png").stat().st_size > 1000
