"""`herald check`: templates read only what their event schema provides."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from service.app import Loaded, load
from service.tools.checks import check, css_fallbacks
from tests.conftest import ROOT, SECRETS_ENV, project_settings


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    return tmp_path / "templates"


def _herald_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            **SECRETS_ENV,
            **env,
        },
        timeout=60,
        check=False,
    )


def test_the_project_templates_pass() -> None:
    assert [] == check(load(project_settings()))


def test_unknown_fields_and_names_are_found_with_file_and_line(tmp_path: Path) -> None:
    """A misspelt payload field, a wrong field on a loop variable and an unknown context name
    are each reported with the template, the line and what exists instead."""
    tpl = _copy(tmp_path)
    subject = tpl / "fr" / "order_receipt" / "subject.txt"
    subject.write_text(subject.read_text().replace("payload.order_number", "payload.order_numbr"))
    body = tpl / "en" / "order_receipt" / "body.html"
    body.write_text(
        body.read_text() + "{% for line in payload.lines %}{{ line.nom }}{% endfor %}\n"
    )
    text = tpl / "en" / "order_receipt" / "body.txt"
    text.write_text(text.read_text() + "{{ shipping_adress.city }}\n")
    problems = [str(p) for p in check(load(project_settings(templates_dir=tpl)))]
    assert 3 == len(problems), problems
    assert any(
        p.startswith(
            "fr/order_receipt/subject.txt:1: `payload.order_numbr`: no field "
            "`order_numbr` in herald.events.OrderConfirmedPayload"
        )
        for p in problems
    )
    assert any(
        p.startswith("en/order_receipt/body.html:")
        and "`line.nom`" in p
        and "herald.events.OrderLine (it has: name, quantity" in p
        for p in problems
    )
    assert any("`shipping_adress` is not in the template context" in p for p in problems)


def test_a_template_missing_in_one_locale_is_a_problem(tmp_path: Path) -> None:
    tpl = _copy(tmp_path)
    shutil.rmtree(tpl / "fr" / "account_activation")
    problems = [str(p) for p in check(load(project_settings(templates_dir=tpl)))]
    assert [
        "fr/account_activation/body.html: template file missing",
        "fr/account_activation/body.txt: template file missing",
        "fr/account_activation/subject.txt: template file missing",
    ] == sorted(problems)


def test_route_conditions_are_checked_too(tmp_path: Path) -> None:
    table = (
        (ROOT / "deploy" / "routing.yaml")
        .read_text()
        .replace(
            "        priority: high\n",
            '        priority: high\n        when: "payload.totl.amount_minor > 0"\n',
            1,
        )
    )
    routing = tmp_path / "routing.yaml"
    routing.write_text(table)
    problems = [str(p) for p in check(load(project_settings(routing_file=routing)))]
    assert 1 == len(problems)
    assert problems[0].startswith(
        "routing: events.order.confirmed.notifications[0].when:1: `payload.totl`: no field `totl`"
    )


def test_herald_check_command_fails_on_a_broken_template(tmp_path: Path) -> None:
    tpl = _copy(tmp_path)
    (tpl / "en" / "account_activation" / "subject.txt").write_text("Hi {{ payload.coupon }}")
    out = _herald_check({"HERALD_TEMPLATES_DIR": str(tpl)})
    assert 1 == out.returncode
    assert "en/account_activation/subject.txt:1: `payload.coupon`: no field `coupon`" in out.stderr
    ok = _herald_check({})
    assert 0 == ok.returncode, ok.stderr


def test_herald_check_warns_of_a_template_inlined_per_mail_and_passes(tmp_path: Path) -> None:
    """A template whose CSS cannot be inlined at load still works: a warning line, not a
    failure, naming the template and why."""
    tpl = _copy(tmp_path)
    body = tpl / "en" / "order_receipt" / "body.html"
    anchor = "<h1>Thanks for your order!</h1>"
    assert anchor in body.read_text()
    body.write_text(
        body.read_text().replace(
            anchor, f'{anchor}<p {{% if payload.lines %}}class="muted"{{% endif %}}>x</p>'
        )
    )
    out = _herald_check({"HERALD_TEMPLATES_DIR": str(tpl)})
    assert 0 == out.returncode, out.stderr
    assert (
        "herald check: warning: en/order_receipt/body.html: CSS inlined per mail, not at load "
        "(costs every mail): Jinja between attributes\n"
    ) in out.stderr
    assert 1 == out.stderr.count("herald check: warning:")
    assert out.stdout.startswith("check OK")


def test_the_project_templates_all_have_their_css_inlined_at_load(loaded: Loaded) -> None:
    assert [] == css_fallbacks(loaded)


def test_readme_catalogue_lists_every_route() -> None:
    """The README's catalogue table cannot drift from the routing table."""
    readme = (ROOT / "README.md").read_text()
    table = load(project_settings()).table
    for event_type, routes in table.routes.items():
        for r in routes:
            row = f"| `{event_type}` | `{r.spec.type}` | {r.spec.category.value}"
            assert row in readme, f"README catalogue lacks {event_type} → {r.spec.type}"
            assert f"`{r.spec.template}`" in readme


def test_herald_check_lists_the_fields_links_are_made_of() -> None:
    """`--links`: an operator learns which event fields must be https URLs."""
    out = subprocess.run(
        [sys.executable, "-m", "service", "check", "--links"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **SECRETS_ENV},
        timeout=60,
        check=False,
    )
    assert 0 == out.returncode, out.stderr
    assert "links of en/account_activation: payload.activation_url\n" in out.stdout
    assert "links of fr/order_shipped: payload.tracking_url, payload.order_url\n" in out.stdout
