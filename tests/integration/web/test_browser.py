"""The three pages in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, installed by
:func:`tests.integration.web._browser.ensure_chromium` when missing), driven by Selenium.

Each page's rows and numbers are checked against the database, an alert is followed to its object, the
cutout and lightcurve images are checked to be decoded images of the right size, a newly logged alert
appears on the open page without a reload, and a screenshot of each page is saved under
``test-artifacts/web/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.orm import aliased

from seechange.lightcurve import lightcurve_table
from seechange.models import (
    AlertLog,
    Cutouts,
    Exposure,
    Image,
    Object,
    Photometry,
    Sighting,
    SubtractionImage,
)
from seechange.pipeline.outbox import alert_to_send, mark_sent
from tests.integration.web._browser import ARTIFACTS, chrome, ensure_chromium
from tests.integration.web.conftest import WebNight

WAIT_S = 30


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    try:
        browser, chromedriver = ensure_chromium()
    except RuntimeError as exc:
        pytest.skip(f"no headless Chromium here: {exc}")
    d = chrome(browser, chromedriver, width=1400, height=2000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield d
    finally:
        d.quit()


def _wait(driver: Any, condition: Any, message: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message)


def _images_loaded(driver: Any, css: str) -> list[dict[str, Any]]:
    """Wait until every image matching ``css`` has loaded (or failed); their natural sizes and state."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0])).map(function (i) {"
        " return {src: i.src, done: i.complete, w: i.naturalWidth, h: i.naturalHeight}; });"
    )

    def all_done(d: Any) -> list[dict[str, Any]] | bool:
        imgs = d.execute_script(script, css)
        return imgs if imgs and all(i["done"] for i in imgs) else False

    out: list[dict[str, Any]] = _wait(driver, all_done, f"images {css} did not load")
    return out


def _table(driver: Any, css: str) -> list[list[str]]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"{css} tbody tr")
    return [[td.text.strip() for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]


def _scroll_all(driver: Any) -> None:
    """Scroll to the bottom and back, so lazily loaded images are asked for."""
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight);")
    driver.execute_script("window.scrollTo(0, 0);")


def test_alerts_page_rows_and_thumbnails(driver: Any, web_night: WebNight) -> None:
    with web_night.sessions() as s:
        total = s.scalar(select(func.count(AlertLog.id)))
        newest = list(s.scalars(select(AlertLog.alert_id).order_by(AlertLog.id.desc()).limit(50)))
        size = s.scalar(select(func.max(Cutouts.size)))
    driver.get(web_night.url + "/")
    rows = _table(driver, "#alerts")
    assert [int(r[0]) for r in rows] == newest
    assert driver.find_element("id", "total").text == str(total)
    _scroll_all(driver)
    thumbs = _images_loaded(driver, "#alerts img.thumb")
    assert len(thumbs) == 3 * len(rows)
    assert all((t["w"], t["h"]) == (size, size) for t in thumbs), "thumbnails are the stamps at 1:1"
    driver.save_screenshot(str(ARTIFACTS / "alerts.png"))


def test_filter_form_matches_the_api(driver: Any, web_night: WebNight) -> None:
    from selenium.webdriver.common.by import By

    driver.get(web_night.url + "/")
    driver.find_element(By.NAME, "min_snr").send_keys("20")
    driver.find_element(By.ID, "apply").click()
    _wait(driver, lambda d: "min_snr=20" in d.current_url, "the filter form did not submit")
    with web_night.sessions() as s:
        p2 = aliased(Photometry)
        latest = select(func.max(p2.id)).where(p2.sighting_id == Sighting.id).scalar_subquery()
        expected = list(
            s.scalars(
                select(AlertLog.alert_id)
                .join(Sighting, Sighting.id == AlertLog.sighting_id)
                .join(Photometry, Photometry.id == latest)
                .where(func.abs(Photometry.snr) >= 20)
                .order_by(AlertLog.id.desc())
                .limit(50)
            )
        )
    assert [int(r[0]) for r in _table(driver, "#alerts")] == expected
    assert 0 < len(expected)


def test_a_new_alert_appears_without_a_reload(driver: Any, web_night: WebNight) -> None:
    from selenium.webdriver.common.by import By

    driver.get(web_night.url + "/")
    first = _table(driver, "#alerts")[0][0]
    with web_night.sessions() as s, s.begin():
        # the oldest alert is sent again (log row removed, staged anew and marked sent by the outbox's functions)
        log = s.scalars(select(AlertLog).order_by(AlertLog.id)).first()
        assert log is not None
        sighting = s.get(Sighting, log.sighting_id)
        assert sighting is not None
        again, topic, packet = log.alert_id, log.topic, log.packet
        assert packet is not None
        s.execute(delete(AlertLog).where(AlertLog.id == log.id))
        assert alert_to_send(s, sighting, topic=topic, make_packet=lambda: packet) is not None
        assert mark_sent(s, [again]) == 1
    _wait(
        driver,
        lambda d: (
            d.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")[0].get_attribute("data-alert-id")
            == str(again)
        ),
        "the new alert did not appear at the top",
    )
    rows = driver.find_elements(By.CSS_SELECTOR, "#alerts tbody tr")
    assert (
        "fresh" in (rows[0].get_attribute("class") or "") and rows[1].get_attribute("data-alert-id") == first
    )


def test_click_an_alert_to_its_object(driver: Any, web_night: WebNight) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(web_night.url + "/")
    link = driver.find_elements(By.CSS_SELECTOR, "#alerts tbody tr a.object")[0]
    name, sighting_id = link.text, int(link.get_attribute("href").split("sighting=")[1])
    link.click()
    _wait(driver, lambda d: f"/objects/{name}" in d.current_url, "the object page did not open")
    assert driver.find_element(By.ID, "object-name").text == name
    with web_night.sessions() as s:
        obj = s.scalars(select(Object).where(Object.name == name)).one()
        table = lightcurve_table(s, name)
        size = s.scalar(select(Cutouts.size).where(Cutouts.sighting_id == sighting_id))
    sightings = _table(driver, "#sightings")
    assert [int(r[0]) for r in sightings] == [
        int(x) for x in table[table["kind"] == "detection"]["sighting_id"]
    ]
    assert len(sightings) == obj.n_sightings
    assert len(_table(driver, "#forced")) == int((table["kind"] == "forced").sum())
    assert driver.find_element(By.ID, "n-sightings").text == str(obj.n_sightings)
    assert [r[0] for r in _table(driver, "#provenance")] == [
        "exposure", "image", "reference", "difference", "sighting", "photometry",
    ]  # fmt: skip
    (lc,) = _images_loaded(driver, "#lightcurve")
    assert (lc["w"], lc["h"]) == (800, 450)
    cut = _images_loaded(driver, "img.cutout")
    assert [c["src"].split("/cutouts/")[1].split(".")[0] for c in cut] == ["new", "ref", "diff"]
    assert all(f"/sightings/{sighting_id}/" in c["src"] for c in cut)
    assert all((c["w"], c["h"]) == (4 * size, 4 * size) for c in cut), (
        "full resolution, 4 screen px per pixel"
    )
    driver.save_screenshot(str(ARTIFACTS / "object.png"))

    Select(driver.find_element(By.ID, "stretch")).select_by_value("asinh")
    _wait(driver, lambda d: "stretch=asinh" in d.current_url, "the stretch did not change")
    cut = _images_loaded(driver, "img.cutout")
    assert all("stretch=asinh" in c["src"] and c["w"] == 4 * size for c in cut)


def test_search_by_name_and_cone(driver: Any, web_night: WebNight) -> None:
    from selenium.webdriver.common.by import By

    with web_night.sessions() as s:
        obj = s.scalars(select(Object).order_by(Object.n_sightings.desc(), Object.id)).first()
        assert obj is not None
    driver.get(web_night.url + "/pipeline")
    box = driver.find_element(By.CSS_SELECTOR, "#name-search input[name=name]")
    box.send_keys(obj.name)
    box.submit()
    _wait(
        driver,
        lambda d: d.current_url.endswith(f"/objects/{obj.name}"),
        "name search did not lead to the object",
    )
    form = driver.find_element(By.ID, "cone-search")
    form.find_element(By.NAME, "ra").send_keys(f"{obj.ra:.6f}")
    form.find_element(By.NAME, "dec").send_keys(f"{obj.dec:.6f}")
    form.find_element(By.NAME, "radius").send_keys("2")
    form.submit()
    _wait(driver, lambda d: "/search?" in d.current_url, "cone search did not open")
    found = _table(driver, "#found")
    assert found and found[0][0] == obj.name and float(found[0][-1]) < 1.0


def test_pipeline_page_numbers(driver: Any, web_night: WebNight) -> None:
    with web_night.sessions() as s:
        counts = {
            "ingest": s.scalar(select(func.count(Exposure.id))),
            "reduce": s.scalar(select(func.count(Image.id))),
            "subtract": s.scalar(select(func.count(SubtractionImage.id))),
            "detect": s.scalar(select(func.count(Sighting.id))),
            "alert": s.scalar(select(func.count(AlertLog.id))),
        }
        exposures = list(s.scalars(select(Exposure.id).order_by(Exposure.mjd, Exposure.id)))
    driver.get(web_night.url + "/pipeline")
    stages = {r[0]: r for r in _table(driver, "#stages")}
    assert {k: int(stages[k][4]) for k in counts} == counts
    assert stages["reduce"][6] == "1" and stages["detect"][6] == "0" and stages["alert"][2] == "0"
    errors = _table(driver, "#errors")
    assert (
        len(errors) == 1 and errors[0][0] == "reduce" and errors[0][4].startswith(web_night.dead_letter_error)
    )
    rows = _table(driver, "#exposures")
    assert [int(r[0]) for r in rows] == exposures
    assert sum(int(r[9]) for r in rows) == counts["alert"]
    (lat,) = _images_loaded(driver, "#latency")
    assert (lat["w"], lat["h"]) == (800, 350)
    driver.save_screenshot(str(ARTIFACTS / "pipeline.png"))
