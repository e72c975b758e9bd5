"""The `paper` backend: replays the measurements published with "Mind the Memory Gap"
(shared/paper-data/profiles.csv) as if it were measuring them, to check sweeps against real data.

One group of rows (model, experiment family, output length) is one profiling run: measuring a
batch size is looking its row up. A row whose run failed, or a batch size the paper never ran,
is a failed point, as a crashed engine would be.
"""

from __future__ import annotations

from pathlib import Path

from llmpack.advisor.architectures import PAPER_MODELS, paper_name
from llmpack.advisor.errors import AdvisorError
from llmpack.advisor.loaders import PAPER_CSV, load_paper_profile, paper_point, read_paper_rows
from llmpack.api.profile import Profile, ProfilePoint
from llmpack.errors import UserError
from llmpack.profiler.backend import Backend
from llmpack.profiler.sweep import PointFailed


class PaperBackend(Backend):
    name = "paper"

    def __init__(self, model: str, output_len: int | None = None, data_dir: str | Path | None = None):
        short = paper_name(model)
        if short is None:
            raise UserError(f"unknown paper model {model.strip()!r}: use one of {', '.join(PAPER_MODELS)}")
        try:
            # validates the group and gives the run-level facts (model, GPU, engine, workload)
            self._template = load_paper_profile(short, output_len, data_dir)
            rows = read_paper_rows(data_dir)
        except AdvisorError as err:
            raise UserError(str(err)) from None
        self.model = short
        self.family = "background" if output_len is None else "advisor"
        self.setting = "sharegpt" if output_len is None else str(output_len)
        self.rows = {
            int(r["max_num_seqs"]): r
            for r in rows
            if r["model"] == short and r["family"] == self.family and r["output_len_setting"] == self.setting
        }

    @property
    def group(self) -> str:
        return f"model={self.model} family={self.family} output_len={self.setting}"

    def default_candidates(self) -> list[int]:
        """Every batch size the paper ran for this group, failed runs included."""
        return sorted(self.rows)

    def measure(self, batch: int) -> ProfilePoint:
        row = self.rows.get(batch)
        if row is None:
            raise PointFailed(f"the paper has no run at B={batch} ({self.group})")
        if row["status"] != "ok":
            raise PointFailed(f"the paper's run failed: {row.get('failure_reason') or 'no result'}")
        return paper_point(row)

    def profile(self, points: list[ProfilePoint], notes: list[str]) -> Profile:
        data = self._template.model_dump()
        data.update(
            points=[p.model_dump() for p in points],
            notes=list(notes),
            backend="paper",
            source=f"paper-data/{PAPER_CSV}: {self.group}",
        )
        return Profile.model_validate(data)
