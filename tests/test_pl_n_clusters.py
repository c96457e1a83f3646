"""pl.n_clusters_criterion: the picture of how choose_n_clusters chose the number of metaclusters."""

import matplotlib

matplotlib.use("Agg")

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from pixelflowsom import ConsensusClustering, pl
from pixelflowsom._metacluster import choose_n_clusters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def codes():
    """60 codes in four groups of unequal size far apart."""
    rng = np.random.default_rng(0)
    return np.repeat(np.eye(8)[:4] * 3.0, [25, 15, 12, 8], axis=0) + rng.normal(0, 0.3, size=(60, 8))


@pytest.fixture(scope="module")
def knee():
    return choose_n_clusters(codes(), max_clusters=10)


@pytest.fixture(scope="module")
def elbow():
    return choose_n_clusters(codes(), max_clusters=10, method="elbow")


@pytest.fixture(scope="module")
def consensus():
    model = ConsensusClustering(n_resamples=20, random_state=0)
    return choose_n_clusters(codes(), model, max_clusters=10, method="delta_area")


def texts(ax):
    return [t.get_text() for t in ax.texts]


def stability_bars(ax):
    return {int(round(p.get_x() + p.get_width() / 2)): p for p in ax.patches}


def test_knee_picture(knee, tmp_path):
    assert (knee.method, knee.n_clusters) == ("knee", 4)
    fig = pl.n_clusters_criterion(knee, save=tmp_path / "knee.png")
    assert len(fig.axes) == 2  # criterion, stability
    ax, stability_ax = fig.axes
    assert ax.get_title() == "Knee of the log within-cluster sum of squares: k = 4"
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == "within-cluster sum of squares (log scale)"
    x, y = ax.lines[0].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 11))
    np.testing.assert_allclose(y, np.exp(knee.criterion["log_wss"]))
    np.testing.assert_allclose(y, knee.criterion["wss"], rtol=1e-6)
    # the straight line between the ends (straight on the log axis), and the distance at k = 4 down to it
    chord = ax.lines[1]
    np.testing.assert_array_equal(chord.get_xdata(), [1, 10])
    np.testing.assert_allclose(chord.get_ydata(), y[[0, -1]])
    gap = ax.lines[2]
    np.testing.assert_array_equal(gap.get_xdata(), [4, 4])
    log_y = np.log(y)
    np.testing.assert_allclose(gap.get_ydata(), [y[3], np.exp(log_y[0] + (log_y[-1] - log_y[0]) * 3 / 9)])
    assert texts(ax) == ["k = 4"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["WSS (pixel-weighted)", "line from first to last k", "knee: farthest below the line"]
    # stability: one bar per k, the height the fraction of resamples choosing it, the chosen one red
    bars = stability_bars(stability_ax)
    assert sorted(bars) == list(range(1, 11))
    np.testing.assert_allclose([bars[k].get_height() for k in range(1, 11)], knee.stability.to_numpy())
    assert bars[4].get_facecolor() == matplotlib.colors.to_rgba("tab:red")
    assert bars[3].get_facecolor() == matplotlib.colors.to_rgba("0.6")
    assert stability_ax.get_title() == f"Stability: {100 * knee.stability[4]:.0f} % of the resamples choose k = 4"
    assert stability_ax.get_ylabel() == "fraction of resamples choosing k"
    assert (tmp_path / "knee.png").read_bytes()[:8] == PNG_MAGIC


def test_elbow_picture(elbow, tmp_path):
    assert elbow.n_clusters == 4
    fig = pl.n_clusters_criterion(elbow, save=tmp_path / "elbow.png")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # criterion, stability
    ax = fig.axes[0]
    assert ax.get_title() == "Elbow of the within-cluster sum of squares: k = 4"
    assert ax.get_xlabel() == "number of metaclusters k"
    x, y = ax.lines[0].get_data()
    np.testing.assert_array_equal(x, np.arange(1, 11))
    np.testing.assert_allclose(y, elbow.criterion["wss_smoothed"])
    np.testing.assert_allclose(ax.lines[1].get_ydata(), elbow.criterion["wss"])
    assert texts(ax) == ["k = 4"]
    # the two straight lines: through k = 1..3 and k = 4..10, ending where their parts end
    fits = [line for line in ax.lines if line.get_linestyle() == "--" and len(line.get_xdata()) == 2]
    assert [tuple(line.get_xdata()) for line in fits] == [(1, 3), (4, 10)]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["WSS, smoothed (R FlowSOM)", "WSS", "two-line fit"]
    path = tmp_path / "elbow.png"
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    bars = stability_bars(fig.axes[1])
    np.testing.assert_allclose([bars[k].get_height() for k in range(1, 11)], elbow.stability.to_numpy())
    # a choice without stability (n_resamples=0, or pickled before it existed) draws the criterion alone
    alone = pl.n_clusters_criterion(dataclasses.replace(elbow, stability=None))
    assert len(alone.axes) == 1


def test_consensus_picture_has_the_cdf_panel(consensus):
    k = consensus.n_clusters
    fig = pl.n_clusters_criterion(consensus)
    criterion_ax, cdf_ax = fig.axes[:2]
    assert len(fig.axes) == 3  # criterion, CDF and the CDF's colorbar
    assert criterion_ax.get_title() == f"Consensus delta area: k = {k}"
    assert criterion_ax.get_yscale() == "symlog"
    x, y = criterion_ax.lines[0].get_data()
    np.testing.assert_array_equal(x, np.arange(2, 11))
    np.testing.assert_allclose(y, consensus.criterion["delta_area"].iloc[1:])
    assert texts(criterion_ax) == [f"k = {k}"]
    threshold = [line for line in criterion_ax.lines if line.get_linestyle() == ":"]
    np.testing.assert_allclose(threshold[0].get_ydata(), [0.02, 0.02])
    # one CDF per k = 2..10, the chosen one black and thick
    assert len(cdf_ax.lines) == 9
    chosen = [line for line in cdf_ax.lines if line.get_color() == "black"]
    assert len(chosen) == 1
    assert chosen[0].get_linewidth() > 2
    np.testing.assert_allclose(chosen[0].get_ydata(), consensus.cdf[k][1])
    assert cdf_ax.get_xlabel() == "consensus index"
    assert fig.axes[2].get_ylabel() == "k"


def test_given_axes(knee, elbow, consensus):
    fig, ax = plt.subplots()
    assert pl.n_clusters_criterion(consensus, ax=ax, title="mine") is fig
    assert len(fig.axes) == 1  # one Axes: the criterion only
    assert ax.get_title() == "mine"
    fig, axes = plt.subplots(1, 2)
    assert pl.n_clusters_criterion(consensus, ax=axes) is fig
    assert len(axes[1].lines) == 9
    fig, axes = plt.subplots(1, 2)
    assert pl.n_clusters_criterion(knee, ax=list(axes)) is fig
    assert len(axes[1].patches) == 10  # the stability bars
    fig, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match=r"ax holds 3 Axes but this choice draws 2: the criterion and the stability"):
        pl.n_clusters_criterion(elbow, ax=list(axes))
    sub = plt.figure().subfigures(1, 2)[0].subplots()
    assert pl.n_clusters_criterion(elbow, ax=sub) is sub.figure.figure


def test_consensus_elbow_and_knee_draw_the_wss_and_the_cdf():
    model = ConsensusClustering(n_resamples=10, random_state=0)
    for method, title in (("elbow", "Elbow"), ("knee", "Knee")):
        choice = choose_n_clusters(codes(), model, max_clusters=8, method=method)
        fig = pl.n_clusters_criterion(choice)
        assert fig.axes[0].get_title().startswith(title)
        assert len(fig.axes) == 3  # criterion, CDF and its colorbar: a consensus has no stability
        assert len(fig.axes[1].lines) == 7


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ax": "left"}, TypeError, "ax='left' must be None, a matplotlib Axes or a sequence of Axes"),
        ({"ax": []}, TypeError, r"ax=\[\] must be None, a matplotlib Axes or a sequence of Axes"),
        ({"save": 3}, TypeError, "save=3 must be a file path"),
    ],
)
def test_bad_arguments(elbow, kwargs, error, match):
    with pytest.raises(error, match=match):
        pl.n_clusters_criterion(elbow, **kwargs)


def test_bad_choice(elbow):
    with pytest.raises(TypeError, match="choice must be what pixelflowsom's choose_n_clusters returns"):
        pl.n_clusters_criterion({"n_clusters": 3})
    with pytest.raises(ValueError, match="no 'wss_smoothed' column"):
        pl.n_clusters_criterion(dataclasses.replace(elbow, criterion=elbow.criterion.drop(columns="wss_smoothed")))
