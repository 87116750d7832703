"""``torchmf index``: build an approximate (HNSW) index over a saved model's items and save it beside them."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from torchmf.cli import common

__all__ = ["add_parser"]

_DESCRIPTION = """\
Build an HNSW graph over a saved model's item factors for fast approximate
top-k retrieval, measure its recall@10 against exact search on a sample of
users, and save it into the model folder (faiss' binary format, checksummed
in torchmf.json). Queries use it with 'recommend(..., approximate=True)'.
Needs the ann extra: pip install 'torchmf[ann]'.
"""

_EXAMPLES = """\
examples:
  torchmf index model
  torchmf index model --m 48 --ef-construction 400 --ef-search 200
  torchmf index model --graphs ip         # faiss' inner-product graph (no hnswlib needed)
"""


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "index", parents=parents, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="build and save an approximate (HNSW) index for a big catalogue",
        description=_DESCRIPTION, epilog=_EXAMPLES,
    )
    p.add_argument("model", metavar="MODEL_DIR", help="folder written by 'torchmf train'; the index is saved into it")
    p.add_argument("--graphs", choices=("mobius", "ip", "union"), default="mobius",
                   help="'mobius': a Euclidean graph over Moebius-transformed vectors (hnswlib; the best recall per "
                        "query time); 'ip': an inner-product graph (faiss); 'union': an inner-product and an angular "
                        "graph's edges in one (hnswlib) (default mobius)")
    p.add_argument("--m", type=common.positive_int, default=None,
                   help="graph degree: more = better recall, bigger (default mobius 16, ip 32, union 24)")
    p.add_argument("--ef-construction", type=common.positive_int, default=None, metavar="N",
                   help="beam width while building (default mobius 100, ip 200, union 128)")
    p.add_argument("--ef-search", type=common.positive_int, default=None, metavar="N",
                   help="beam width while searching: more = better recall, slower (default mobius 100, ip 100, "
                        "union 300)")
    p.add_argument("--recall-users", type=common.positive_int, default=1000, metavar="N",
                   help="users sampled to measure recall@10 against exact search (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample (default 0)")
    common.add_format(p, ("table", "json"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = common.load_model(args.model)
    try:
        index = model.build_index("hnsw", m=args.m, ef_construction=args.ef_construction, graphs=args.graphs,
                                  ef_search=args.ef_search, n_recall=args.recall_users, seed=args.seed)
    except (ImportError, ValueError) as exc:
        raise common.CLIError(str(exc)) from None
    model.save(args.model, overwrite=True)
    info = {"items": index.n_items, **index.info, "saved_in": args.model}
    if args.format == "json":
        sys.stdout.write(json.dumps({k: common.plain(v) for k, v in info.items()}, indent=2) + "\n")
    else:
        print(f"HNSW index ({args.graphs}) over {index.n_items} items (m={info['m']}, "
              f"ef_construction={info['ef_construction']}, ef_search={info['ef_search']}): "
              f"recall@10 {info['recall_at_10']:.4f} against exact search on "
              f"{info['recall_queries']} users; built in {info['build_seconds']:.1f} s, saved in {args.model}")
    return 0
