"""What `herald feedback` reads from its paths: files, folders of .eml, maildirs."""

from __future__ import annotations

import mailbox
from pathlib import Path

from service.feedback.intake import _messages, feedback_settings
from service.settings.feedback import FeedbackSettings
from tests.conftest import ROOT, project_settings

DATA = ROOT / "tests" / "data" / "feedback"


def test_a_folder_gives_its_eml_files_in_order() -> None:
    """Not recursive: the hostile samples under hostile/ are not read with their parent."""
    sources = [s for s, _, _ in _messages([DATA])]
    assert sorted(str(p) for p in DATA.glob("*.eml")) == sources


def test_a_maildir_gives_every_message(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "md", create=True)
    keys = {box.add(b"Subject: one\n\nx\n"), box.add(b"Subject: two\n\ny\n")}
    found = {s.rpartition(":")[2]: raw for s, raw, _ in _messages([tmp_path / "md"])}
    assert keys == set(found)
    assert all(isinstance(raw, bytes) and b"Subject:" in raw for raw in found.values())


def test_a_missing_file_gives_its_reason_not_an_exception(tmp_path: Path) -> None:
    [(source, reason, _)] = list(_messages([tmp_path / "gone.eml"]))
    assert str(tmp_path / "gone.eml") == source
    assert isinstance(reason, str)
    assert reason.startswith("unreadable:")


def test_feedback_settings_default_until_settings_has_the_group() -> None:
    assert FeedbackSettings() == feedback_settings(project_settings())
