"""The effort log: what annotating cost, per image and per person, in the units of the NoC benchmark.

A *click* is one keypoint the user placed (the simulated user of NoC makes one per person per round); a *round* is
one refinement the person took part in; *seconds* is the time between the user's actions on an image, given to the
person acted on (or to the image), with pauses longer than ``IDLE_CAP_S`` counted as that cap.
"""
from __future__ import annotations

from typing import Any, Optional

from tools.annotate.store import kept

IDLE_CAP_S = 30.0
EDITS = ("visibility", "add_person", "delete_person", "swap", "undo", "redo", "accept")


def new_image_log() -> dict[str, Any]:
    return {"seconds": 0.0, "edits": {name: 0 for name in EDITS}, "people": {}}


def person_log(log: dict[str, Any], person: int) -> dict[str, Any]:
    return log["people"].setdefault(str(person), {"clicks": 0, "rounds": 0, "seconds": 0.0})


def record(log: dict[str, Any], seconds: float, person: Optional[int] = None, edit: Optional[str] = None,
           clicks: Optional[dict[int, int]] = None) -> None:
    """Add one action: ``seconds`` since the previous one (capped), an ``edit`` count, per-person ``clicks``."""
    seconds = min(max(seconds, 0.0), IDLE_CAP_S)
    log["seconds"] += seconds
    if edit is not None:
        log["edits"][edit] = log["edits"].get(edit, 0) + 1
    for who, count in (clicks or {}).items():
        entry = person_log(log, who)
        entry["clicks"] += count
        entry["rounds"] += 1
    if clicks:  # the time of a refinement goes to the clicked people, shared equally
        for who in clicks:
            person_log(log, who)["seconds"] += seconds / len(clicks)
    elif person is not None:
        person_log(log, person)["seconds"] += seconds


def summarize(images: dict[str, dict[str, Any]], total_images: Optional[int] = None) -> dict[str, Any]:
    """Totals over the images marked done (what the COCO ``annotations`` hold): ``images`` maps a name to its tool
    record ('status', 'threshold', 'effort', 'people'). People are those written for the image (not deleted, and
    edited or scored at or above its threshold), so ``clicks_per_person`` is clicks over annotated people. Opened
    images not done are listed per image and in ``not_done`` but left out of the totals."""
    people = clicks = rounds = 0
    seconds = 0.0
    per_image = []
    not_done = {"images": 0, "clicks": 0, "seconds": 0.0}
    for name, rec in sorted(images.items()):
        log = rec.get("effort") or new_image_log()
        threshold = rec.get("threshold", 0.0)
        image_people = sum(1 for p in rec.get("people", []) if kept(p, threshold))
        image_clicks = sum(p["clicks"] for p in log["people"].values())
        image_rounds = sum(p["rounds"] for p in log["people"].values())
        status = rec.get("status", "todo")
        per_image.append({"image": name, "status": status, "people": image_people,
                          "clicked_people": len(log["people"]), "clicks": image_clicks, "rounds": image_rounds,
                          "seconds": round(log["seconds"], 1), "edits": {k: v for k, v in log["edits"].items() if v}})
        if status == "done":
            people += image_people
            clicks += image_clicks
            rounds += image_rounds
            seconds += log["seconds"]
        else:
            not_done["images"] += 1
            not_done["clicks"] += image_clicks
            not_done["seconds"] += log["seconds"]
    done = len(per_image) - not_done["images"]
    not_done["seconds"] = round(not_done["seconds"], 1)
    return {"images_done": done, "images_total": total_images if total_images is not None else len(images),
            "people": people, "clicks": clicks, "rounds": rounds, "seconds": round(seconds, 1),
            "clicks_per_person": round(clicks / people, 2) if people else 0.0,
            "seconds_per_image": round(seconds / done, 1) if done else 0.0, "not_done": not_done,
            "per_image": per_image}


def format_summary(summary: dict[str, Any]) -> str:
    rest = summary.get("not_done") or {}
    lines = [f"images done: {summary['images_done']} / {summary['images_total']}",
             f"done images: people kept: {summary['people']}   clicks: {summary['clicks']}   "
             f"rounds: {summary['rounds']}   seconds: {summary['seconds']}",
             f"clicks per kept person (compare with NoC): {summary['clicks_per_person']}   "
             f"seconds per done image: {summary['seconds_per_image']}",
             f"not counted (opened, not done): {rest.get('images', 0)} images, {rest.get('clicks', 0)} clicks, "
             f"{rest.get('seconds', 0.0)} seconds", "",
             f"{'image':40s} {'status':12s} {'people':>6s} {'clicks':>6s} {'rounds':>6s} {'seconds':>8s}  edits"]
    for row in summary["per_image"]:
        edits = ", ".join(f"{k} {v}" for k, v in row["edits"].items())
        lines.append(f"{row['image'][:40]:40s} {row['status']:12s} {row['people']:6d} {row['clicks']:6d} "
                     f"{row['rounds']:6d} {row['seconds']:8.1f}  {edits}")
    return "\n".join(lines)
