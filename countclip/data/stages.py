"""The build's row stages as Ray Data runs them, and the reconciliation of every source row.

    FetchStage    the fetch stage over the rows the caption stage kept (rejected rows pass untouched)
    VerifyStage   the YOLO verify stage, loaded once per actor
    StageWriter   each row's fate (written, or rejected at a stage with a reason); kept rows are
                  staged as parquet parts, and one small tally row per input row goes back to the driver

``tally_report`` folds the tallies into rows in = written + rejected by stage and reason;
``verifier_scores`` scores the verifier's decisions against CountWorld's ground truth.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from countclip import storage
from countclip.data.fetch import FetchConfig, ImageFetcher
from countclip.data.verify import VerifyConfig, YoloVerifier


class FetchStage:
    """Fetch the images of rows still ok; rows already rejected pass through untouched."""

    def __init__(self, cfg: FetchConfig):
        self.fetcher = ImageFetcher(cfg.replace(url_column="url"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["status"] == "ok"
        n = len(ok)
        out = dict(batch)
        out["image"] = np.full(n, None, dtype=object)
        out["fetch_status"] = np.full(n, "skipped", dtype=object)
        out["image_width"] = np.zeros(n, dtype=np.int64)
        out["image_height"] = np.zeros(n, dtype=np.int64)
        if ok.any():
            fetched = self.fetcher({k: v[ok] for k, v in batch.items()})
            for key in ("image", "fetch_status", "image_width", "image_height"):
                out[key][ok] = fetched[key]
        out["fetch_node"] = np.full(n, _node_id(), dtype=object)
        return out


class VerifyStage:
    """YOLO count verification of the counting rows (loaded once per actor)."""

    def __init__(self, cfg: VerifyConfig):
        self.verifier = YoloVerifier(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.verifier(batch)
        out["verify_node"] = np.full(len(batch["status"]), _node_id(), dtype=object)
        return out


def skip_verification(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The verify stage when ``verify.enabled`` is false: every row passes as "unverified" (a naively
    filtered dataset, the paper's ablation: the caption filter alone decides what counts)."""
    n = len(batch["status"])
    return {**batch, "detected_count": np.full(n, -1, dtype=np.int64), "verified": np.zeros(n, dtype=bool),
            "verify_status": np.full(n, "unverified", dtype=object), "verify_class": np.full(n, "", dtype=object),
            "verify_node": np.full(n, _node_id(), dtype=object)}


class StageWriter:
    """Decide each row's fate, stage the kept rows as parquet, return per-row tallies."""

    TALLY = pa.schema([("sample_id", pa.string()), ("kind", pa.string()), ("caption_count", pa.int16()),
                       ("detected_count", pa.int64()), ("stage", pa.string()), ("reason", pa.string()),
                       ("n_rows", pa.int64()), ("fetch_node", pa.string()), ("verify_node", pa.string())])

    def __init__(self, staging: str):
        self.staging = staging

    def __call__(self, batch: pa.Table) -> pa.Table:
        stage, reason = final_status(batch)
        kept = np.asarray(stage) == "written"
        if kept.any():
            buffer = pa.BufferOutputStream()
            pq.write_table(batch.filter(pa.array(kept)).drop_columns(["fetch_node", "verify_node"]), buffer)
            storage.write_bytes(f"{self.staging}/part-{uuid.uuid4().hex}.parquet", buffer.getvalue().to_pybytes())
        return pa.table({
            "sample_id": batch.column("sample_id"), "kind": batch.column("kind"),
            "caption_count": batch.column("caption_count"), "detected_count": batch.column("detected_count"),
            "stage": pa.array(stage, pa.string()), "reason": pa.array(reason, pa.string()),
            "n_rows": batch.column("n_rows"),
            "fetch_node": batch.column("fetch_node"), "verify_node": batch.column("verify_node"),
        }, schema=self.TALLY)


def final_status(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(stage, reason) per row: the first stage that rejected it, or ("written"-candidate, "ok")."""
    status = np.asarray(batch.column("status").to_pylist(), dtype=object)
    fetch = np.asarray(batch.column("fetch_status").to_pylist(), dtype=object)
    verify = np.asarray(batch.column("verify_status").to_pylist(), dtype=object)
    counting = np.asarray(pc.equal(batch.column("kind"), "counting"))
    stage = np.full(len(status), "written", dtype=object)
    reason = np.full(len(status), "ok", dtype=object)
    rules = [
        ("captions", status != "ok", status),
        ("fetch", (status == "ok") & (fetch != "ok"), fetch),
        ("verify", (status == "ok") & (fetch == "ok") & counting & ~np.isin(verify, ["verified", "unverified"]), verify),
    ]
    for name, mask, why in rules:
        stage[mask], reason[mask] = name, why[mask]
    return stage, reason


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (unit tests call the stages directly)
        return "local"


def tally_report(tallies: pa.Table, balance_rejects: dict[str, int]) -> dict:
    """rows in, rejects by stage and reason, verified counts per count, nodes that did the work."""
    df = tallies.to_pandas()
    rejects: dict[str, dict[str, int]] = {}
    for (stage, reason), n in df[df.stage != "written"].groupby(["stage", "reason"]).n_rows.sum().items():
        rejects.setdefault(stage, {})[reason] = int(n)
    if balance_rejects:
        rejects["balance"] = balance_rejects
    verified = df[(df.stage == "written") & (df.kind == "counting")]
    return {
        "rows_in": int(df.n_rows.sum()),
        "rows_rejected": int(sum(sum(r.values()) for r in rejects.values())),
        "rejects": rejects,
        "per_count_verified": {str(c): int((verified.caption_count == c).sum()) for c in range(2, 11)},
        "nodes": {"fetch": sorted(set(df.fetch_node.dropna()) - {"local"} or set(df.fetch_node.dropna())),
                  "verify": sorted(set(df.verify_node.dropna()) - {"local"} or set(df.verify_node.dropna()))},
    }


def verifier_scores(tallies: pa.Table, truth_uri: str) -> dict:
    """Precision/recall of keeping truthful counting rows, against CountWorld's ground truth."""
    filesystem, path = storage.arrow_filesystem(truth_uri)
    truth = pq.read_table(path, filesystem=filesystem).to_pandas().set_index("sample_id").add_prefix("truth_")
    df = tallies.to_pandas()
    df = df[(df.kind == "counting") & df.stage.isin(["written", "verify"]) & df.sample_id.notna()]
    joined = df.join(truth, on="sample_id", how="inner")
    truthful = joined.truth_stated_count == joined.truth_true_count
    kept = joined.stage == "written"
    tp = int((kept & truthful).sum())
    return {
        "rows_scored": len(joined),
        "precision": tp / max(1, int(kept.sum())),
        "recall": tp / max(1, int(truthful.sum())),
        "lying_rows_rejected": int((~kept & ~truthful).sum()),
        "lying_rows_kept": int((kept & ~truthful).sum()),
        "truthful_rows_rejected": int((~kept & truthful).sum()),
    }
