"""Rule `study_record`: results/<study>/study.json, then results/index.json rebuilt
(llm_energy.study.layout)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import logged

from llm_energy.study.layout import write_index, write_record

with logged(snakemake):
    out = Path(snakemake.output[0])
    write_record(dict(snakemake.params.record), out)
    index = write_index(out.parent.parent)
    print(f"wrote {out}; {len(index['studies'])} study(ies) in {out.parent.parent}/index.json")
