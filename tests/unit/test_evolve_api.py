"""/api/evolve: the tree and a variant for users, promote and rollback for admins, refusals as 400."""

from __future__ import annotations

from pathlib import Path

from corral.evolve.archive import Archive, CaseScore
from corral.evolve.prompts import PromptBook
from corral.evolve.roles import seed
from corral.gateway.app import create_app
from tests.unit.conftest import Harness

SUITE = """version: 1
name: mini
role: system
cases:
  - {id: v1, split: validation, input: {messages: []}, expect: [{contains: a}]}
  - {id: h1, split: heldout, input: {messages: []}, expect: [{contains: a}]}
"""


def scored(archive: Archive, variant: str, split: str, case: str, value: float) -> None:
    archive.record_score(
        CaseScore(variant, "mini", split, case, value, value == 1, "o", "f", 1, 1, "r", "e", "s", "")
    )


async def test_tree_detail_promote_and_rollback(tmp_path: Path) -> None:
    (tmp_path / "evolve" / "suites").mkdir(parents=True)
    (tmp_path / "evolve" / "suites" / "mini.yaml").write_text(SUITE)
    archive = Archive(tmp_path)
    root = archive.ensure_root("mini", "system", seed("system"))
    good = archive.add_variant(
        suite="mini", role="system", prompts={"system": "better"}, parent_ids=[root.id], rationale="why"
    )
    bad = archive.add_variant(suite="mini", role="system", prompts={"system": "worse"}, parent_ids=[root.id])
    for variant, value in ((root, 0.0), (good, 1.0), (bad, 0.0)):
        scored(archive, variant.id, "validation", "v1", value)
    scored(archive, root.id, "heldout", "h1", 1.0)
    scored(archive, good.id, "heldout", "h1", 1.0)
    scored(archive, bad.id, "heldout", "h1", 0.0)

    h = Harness(tmp_path)
    h.service.prompts = PromptBook(tmp_path)
    h.app = create_app(h.gateway)
    async with h.client() as user, h.client(h.admin) as admin:
        tree = (await user.get("/api/evolve/tree")).json()
        assert tree["suite"] == "mini" and tree["promoted"] == {}
        nodes = {n["id"]: n for n in tree["nodes"]}
        assert nodes[good.id]["parents"] == [root.id] and nodes[good.id]["score"] == 1.0
        assert nodes[good.id]["pareto"] and not nodes[bad.id]["pareto"]
        one = (await user.get(f"/api/evolve/variants/{good.id}")).json()
        assert one["rationale"] == "why" and "+better" in one["diff"]
        assert {s["case"] for s in one["scores"]} == {"v1", "h1"}
        assert (await user.get("/api/evolve/variants/v_missing")).status_code == 404

        assert (await user.post("/api/evolve/promote", json={"variant_id": good.id})).status_code == 403
        refused = await admin.post("/api/evolve/promote", json={"variant_id": bad.id})
        assert refused.status_code == 400 and "regresses on held-out" in refused.json()["error"]["message"]
        assert (await admin.post("/api/evolve/promote", json={"variant": good.id})).status_code == 400
        ok = await admin.post("/api/evolve/promote", json={"variant_id": good.id})
        assert ok.json() == {"promoted": good.id, "role": "system"}
        assert PromptBook(tmp_path).get("system", "seed") == "better"
        assert (await user.get("/api/evolve/tree")).json()["promoted"] == {"system": good.id}
        back = await admin.post("/api/evolve/rollback")
        assert back.json() == {"promoted": None, "pointers": {}}
        assert (await admin.post("/api/evolve/rollback")).status_code == 400
