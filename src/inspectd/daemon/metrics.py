"""Prometheus metrics (prometheus-client): `/metrics` on the daemon's HTTP endpoint (docs/metrics.md).

Two parts, so that the frame loop never waits for a scrape:

- `MetricsSink`, the last sink of the dispatcher (after the PLC, the log and the reject store): per verdict it
  adds the end-to-end latency and each stage's time to prometheus-client histograms, a few lock-free-in-practice
  increments (each value's own uncontended lock, microseconds; measured in docs/metrics.md). It does nothing else.
- `DaemonCollector`, called only while a scrape is being answered (in the HTTP server's thread): it reads the
  counters and states the daemon keeps anyway (DaemonStatus.snapshot) and turns them into metric families. The
  verdict counters are the dispatcher's own, so `/metrics` and the summary line can never disagree.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from inspectd import __version__
from inspectd.core.types import Code, Verdict
from inspectd.daemon.pipeline import State
from inspectd.daemon.status import DaemonStatus

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
STAGE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
CODES = {Code.PASS: "pass", Code.REJECT: "reject", Code.ERROR: "error"}


class MetricsSink:
    """Histograms of every inspected verdict's latency (acquisition to verdict) and per-stage times."""

    name = "metrics"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "inspectd_latency_seconds",
            "Acquisition to verdict, per inspected frame (error verdicts excluded)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stages = Histogram(
            "inspectd_stage_seconds",
            "Time of each inspection stage per frame (preprocess, inference, ssim, decide)",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self._children: dict[str, Histogram] = {}

    def emit(self, verdict: Verdict) -> None:
        if verdict.code is Code.ERROR:
            return
        self.latency.observe(verdict.latency_ms / 1e3)
        for stage, ms in verdict.timings_ms.items():
            child = self._children.get(stage)
            if child is None:
                child = self._children.setdefault(stage, self.stages.labels(stage))
            child.observe(ms / 1e3)

    def close(self) -> None:
        pass


def _gauge(name: str, doc: str, value, labels: dict | None = None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        g.add_metric(list((labels or {}).values()), float(value))
    return g


class DaemonCollector(Collector):
    """Metric families made at scrape time from DaemonStatus.snapshot()."""

    def __init__(self, status: DaemonStatus) -> None:
        self.status = status

    def collect(self):
        s = self.status.snapshot()
        yield from self._pipeline(s)
        yield from self._camera_and_plc(s)
        yield from self._feedback(s)
        yield from self._info(s)

    def _pipeline(self, s: dict):
        frames = CounterMetricFamily("inspectd_frames", "Frames that got their verdict (every frame gets one)")
        frames.add_metric([], s["frames"])
        yield frames
        verdicts = CounterMetricFamily(
            "inspectd_verdicts", "Verdicts by code (error = treated as reject)", labels=["code"]
        )
        for code in ("pass", "reject", "error"):
            verdicts.add_metric([code], s["verdicts"][code])
        yield verdicts
        yield _gauge("inspectd_fps", "Verdicts per second over the last 5 s", s["fps"])
        yield _gauge("inspectd_queue_depth", "Frames waiting between the pipeline's stages", s["queue"])
        yield _gauge("inspectd_queue_size", "Capacity of the acquisition queue (pipeline.queue_size)", s["queue_size"])
        state = GaugeMetricFamily("inspectd_state", "Pipeline state (1 for the current one)", labels=["state"])
        for st in State:
            state.add_metric([st.name.lower()], 1.0 if st.name.lower() == s["state"] else 0.0)
        yield state
        yield _gauge("inspectd_ready", "1 while ready (= the PLC's ready coil; /readyz)", s["ready"])
        yield _gauge("inspectd_healthy", "1 while healthy: alive and the camera delivers (/healthz)", s["healthy"])
        yield _gauge("inspectd_start_time_seconds", "Unix time the daemon started", s["started_at"])

    def _camera_and_plc(self, s: dict):
        cam = s["camera"]
        yield _gauge("inspectd_camera_open", "1 while the camera is open", cam["open"])
        yield _gauge(
            "inspectd_camera_last_image_age_seconds",
            "Seconds since the camera last delivered an image",
            cam["last_image_age_s"],
        )
        yield _gauge(
            "inspectd_camera_read_failing", "1 while the camera's newest read failed", cam["last_error"] is not None
        )
        plc = s.get("plc")
        if plc is not None:
            yield _gauge(
                "inspectd_plc_link_up", "1 while the PLC link is up", plc["link"] == "up", {"mode": plc["mode"]}
            )
            yield _gauge("inspectd_plc_clients", "PLC connections open now", plc["clients"], {"mode": plc["mode"]})

    def _feedback(self, s: dict):
        r = s.get("rejects")
        if r is not None:
            yield _gauge("inspectd_rejects_stored", "Rejects in the reject store", r["count"])
            yield _gauge("inspectd_rejects_stored_bytes", "Bytes of the reject store", r["bytes"])
            not_stored = CounterMetricFamily(
                "inspectd_rejects_not_stored", "Rejects the store could not keep", labels=["reason"]
            )
            not_stored.add_metric(["queue_full"], r["dropped"])
            not_stored.add_metric(["write_failed"], r["write_failures"])
            yield not_stored
            evicted = CounterMetricFamily("inspectd_rejects_evicted", "Rejects deleted to stay within the bounds")
            evicted.add_metric([], r["evicted"])
            yield evicted
        sp = s.get("spool")
        if sp is not None:
            yield _gauge("inspectd_spool_records", "Marked records waiting for the collector's ack", sp["depth"])
            yield _gauge("inspectd_spool_bytes", "Bytes of the spool", sp["bytes"])
            yield _gauge(
                "inspectd_spool_oldest_record_age_seconds",
                "Age of the oldest record waiting for the collector (0 when none waits)",
                sp["oldest_age_s"] or 0.0,
            )
            ev = CounterMetricFamily("inspectd_spool_evicted", "Records deleted because the spool was full")
            ev.add_metric([], sp["evicted"])
            yield ev
        se = s.get("sender")
        if se is not None:
            yield _gauge("inspectd_sender_in_flight", "Records sent and waiting for their ack", se["in_flight"])
            for key, doc in (
                ("sent", "Records sent to the collector (resends included)"),
                ("resent", "Records sent again after an ack timeout"),
                ("acked", "Records the collector acknowledged"),
                ("refused", "Records the collector refused for good (moved to spool/refused)"),
            ):
                c = CounterMetricFamily(f"inspectd_sender_{key}", doc)
                c.add_metric([], se[key])
                yield c

    def _info(self, s: dict):
        build = InfoMetricFamily("inspectd_build", "inspectd version")
        build.add_metric([], {"version": __version__})
        yield build
        model = InfoMetricFamily("inspectd_model", "The model in use (changes on a hot reload)")
        model.add_metric([], {k: str(v) for k, v in s["model"].items()})
        yield model
        runtime = InfoMetricFamily("inspectd_runtime", "onnxruntime providers and Numba threads in use")
        runtime.add_metric([], {k: str(v) for k, v in s["runtime"].items()})
        yield runtime


class Metrics:
    """The daemon's registry (its own, not prometheus-client's global one): the histogram sink now, the collector
    once the daemon's parts exist (`watch`), and the process metrics (CPU, memory, open fds)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.sink = MetricsSink(self.registry)

    def watch(self, status: DaemonStatus) -> None:
        self.registry.register(DaemonCollector(status))

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)
