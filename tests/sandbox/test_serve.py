"""A real uvicorn server on 127.0.0.1 (port 0): the origin follows the port, and drops really cut the socket."""

from __future__ import annotations

import httpx
import pytest

from epic_fhir_async.sandbox import EpicSandbox

from .conftest import CAMILA, DERRICK

pytestmark = pytest.mark.anyio


async def test_serve_on_loopback(sb: EpicSandbox) -> None:
    token = sb.issue_token("c")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    async with sb.serve(host="127.0.0.1", port=0) as base_url:
        assert base_url == sb.base_url
        assert ":8765" not in base_url
        async with httpx.AsyncClient(headers=headers, timeout=10) as http:
            patient = await http.get(f"{base_url}/Patient/{CAMILA}")
            assert patient.status_code == 200
            assert patient.json()["id"] == CAMILA
            page = (
                await http.get(
                    f"{base_url}/Observation",
                    params={"patient": DERRICK, "category": "vital-signs", "_count": 10},
                )
            ).json()
            assert page["entry"][0]["fullUrl"].startswith(base_url)
            (nxt,) = [link["url"] for link in page["link"] if link["relation"] == "next"]
            assert nxt.startswith(base_url)
            assert (await http.get(nxt)).status_code == 200
            sb.faults.drop_rate = 1.0
            with pytest.raises(httpx.TransportError):
                await http.get(f"{base_url}/Patient/{CAMILA}")
            sb.faults.drop_rate = 0.0
            assert (await http.get(f"{base_url}/Patient/{CAMILA}")).status_code == 200
    assert sb.base_url.startswith("http://127.0.0.1:8765/")
    assert sb.stats["faults:drop"] == 1
