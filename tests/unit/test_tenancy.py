"""What one key can learn or reach of others, in-process (the real app and a real SQLite store,
a stand-in for the model side): server files in JSON jobs, owner ids, /health, queue places,
tenants."""

from __future__ import annotations

import hashlib

from pydantic import SecretStr

from serve_app.api.auth import KeyRing, owner_id
from serve_app.capacity.fair import Tenant
from serve_app.store.jobs import EVERYONE, Viewer
from serve_app.store.tables import jobs
from tests.support.api_standin import ADMIN, KEY_A, KEY_B, KEY_C, StandIn, client


def _job(path: object) -> dict[str, object]:
    return {"audio_file_path": str(path)}


async def test_a_key_without_audio_roots_may_not_name_server_files(backend: StandIn) -> None:
    audio, _ = backend.settings.allowed_audio_roots
    async with client(backend, KEY_C) as c:
        present = await c.post("/v1/jobs", json=_job(audio / "a.mp3"))
        missing = await c.post("/v1/jobs", json=_job(audio / "nothing.mp3"))
    assert present.status_code == missing.status_code == 403
    assert present.json() == missing.json()
    assert present.json()["error"]["code"] == "permission_denied"
    assert "upload" in present.json()["error"]["message"]
    assert backend.submitted == []


async def test_a_file_outside_a_keys_roots_gets_the_answer_of_a_missing_one(
    backend: StandIn,
) -> None:
    audio, shared = backend.settings.allowed_audio_roots
    (audio / "dir.mp3").mkdir()
    async with client(backend, KEY_A) as a, client(backend, ADMIN) as admin:
        outside = await a.post("/v1/jobs", json=_job(shared / "z.mp3"))  # the admin's file
        missing = await a.post("/v1/jobs", json=_job(audio / "z.mp3"))
        not_a_file = await a.post("/v1/jobs", json=_job(audio / "dir.mp3"))
        system = await a.post("/v1/jobs", json=_job("/etc/passwd"))
        escape = await a.post("/v1/jobs", json=_job(audio / ".." / "shared" / "z.mp3"))
        own = await a.post("/v1/jobs", json=_job(audio / "a.mp3"))
        by_admin = await admin.post("/v1/jobs", json=_job(shared / "z.mp3"))
    answers = [outside, missing, not_a_file, system, escape]
    assert {r.status_code for r in answers} == {404}
    assert {r.json()["error"]["code"] for r in answers} == {"audio_not_found"}
    # The same words but for the path each one echoes.
    assert len({r.json()["error"]["message"].split(" at ")[0] for r in answers}) == 1
    assert own.status_code == by_admin.status_code == 202


async def test_owner_ids_are_an_hmac_under_the_services_secret(backend: StandIn) -> None:
    audio, _ = backend.settings.allowed_audio_roots
    async with client(backend, KEY_A) as a:
        job = (await a.post("/v1/jobs", json=_job(audio / "a.mp3"))).json()
    with backend.store.engine.connect() as conn:
        owner = conn.execute(jobs.select().where(jobs.c.id == job["id"])).mappings().one()["owner"]
    assert owner == owner_id(KEY_A, backend.owner_secret)
    assert owner != hashlib.sha256(KEY_A.encode()).hexdigest()[:32]
    assert owner != owner_id(KEY_A, b"another service's secret")


async def test_health_details_need_an_admin_key(backend: StandIn) -> None:
    async with (
        client(backend, None) as anonymous,
        client(backend, KEY_A) as user,
        client(backend, "wrong") as wrong,
        client(backend, ADMIN) as admin,
    ):
        answers = [await c.get("/health") for c in (anonymous, user, wrong)]
        full = await admin.get("/health")
    assert all(r.status_code == 200 and r.json() == {"status": "ok"} for r in answers)
    assert full.status_code == 200 and "pools" in full.json()


async def test_queue_places_count_only_the_keys_own_jobs(backend: StandIn) -> None:
    audio, _ = backend.settings.allowed_audio_roots
    async with client(backend, KEY_A) as a, client(backend, KEY_B) as b:
        for _ in range(2):
            assert (await a.post("/v1/jobs", json=_job(audio / "a.mp3"))).status_code == 202
        mine = (await b.post("/v1/jobs", json=_job(audio / "a.mp3"))).json()
        again = (await b.get(f"/v1/jobs/{mine['id']}")).json()
        listed = (await a.get("/v1/jobs")).json()["data"]
    assert mine["queue_position"] == again["queue_position"] == 1
    assert sorted(j["queue_position"] for j in listed) == [1, 2]


async def test_each_key_is_a_tenant_of_its_own_and_no_client_or_store_sees_it(
    backend: StandIn,
) -> None:
    """Fair shares (serve_app.capacity.fair) count each key's work apart: sync requests and
    jobs carry the owner id of the key that sent them; admin keys share one tenant."""
    audio, _ = backend.settings.allowed_audio_roots
    backend.release.set()
    clip = (audio / "a.mp3").read_bytes()
    for key in (KEY_A, KEY_B, ADMIN):
        async with client(backend, key) as c:
            files = {"file": ("a.mp3", clip)}
            sent = await c.post("/v1/audio/transcriptions", files=files, data={"tenant": "x"})
            assert sent.status_code == 200, sent.text
    a, b = (Tenant(owner_id(key, backend.owner_secret)) for key in (KEY_A, KEY_B))
    assert [options.tenant for options in backend.asked] == [a, b, Tenant()]
    async with client(backend, KEY_A) as c:
        job = (await c.post("/v1/jobs", json=_job(audio / "a.mp3"))).json()
        shown = (await c.get(f"/v1/jobs/{job['id']}")).json()
    assert "tenant" not in job["options"] and "tenant" not in shown["options"]
    assert backend.store.get(job["id"]).options.tenant == a
    with backend.store.engine.connect() as conn:
        row = conn.execute(jobs.select().where(jobs.c.id == job["id"])).mappings().one()
    assert "tenant" not in row["options"]


def test_a_keys_weight_comes_with_its_tenant(backend: StandIn) -> None:
    settings = backend.settings.model_copy(update={"api_key_weights": {SecretStr(KEY_A): 3.0}})
    keys = KeyRing(settings, backend.owner_secret)
    a, b = (Viewer(owner_id(key, backend.owner_secret), everyone=False) for key in (KEY_A, KEY_B))
    assert keys.tenant(a) == Tenant(a.owner or "", 3.0)
    assert keys.tenant(b) == Tenant(b.owner or "", 1.0)
    assert keys.tenant(EVERYONE) == Tenant()
