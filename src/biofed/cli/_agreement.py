"""``biofed agreement``: draft, sign, verify and show a study agreement file."""

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import kit_audit
from biofed.cli._output import Format, FormatOption, emit

if TYPE_CHECKING:
    from biofed.governance import AnalyticsPolicy, IncentivePolicy, Party, SignedAgreement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

app = typer.Typer(
    name="agreement",
    help="Draft, sign, verify and show machine-readable study agreements.",
    no_args_is_help=True,
    add_completion=False,
)


_DIR_HELP = "The consortium folder (kits in DIR/<name>/, the CA in DIR/ca/ca.pem)."
ConsortiumDir = Annotated[Path, typer.Option("--consortium-dir", help=_DIR_HELP)]
Multi = list[str] | None


@contextmanager
def _errors() -> Iterator[None]:
    """Turn biofed and file-system errors into one red line and exit code 2."""
    from biofed.core import BiofedError

    try:
        yield
    except (BiofedError, OSError) as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(code=2) from exc


def _names(text: str | None, option: str) -> list[str]:
    from biofed.core import ConfigurationError

    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    if text is not None and not names:
        raise ConfigurationError(f"{option} needs comma-separated names, got {text!r}")
    return names


def _per_site(values: Multi, sites: list[str], option: str) -> dict[str, str]:
    """``VALUE`` for every site and/or ``SITE=VALUE`` for one; the latter wins."""
    from biofed.core import ConfigurationError

    default: str | None = None
    out: dict[str, str] = {}
    for value in values or []:
        site, sep, item = value.partition("=")
        if not sep:
            if default is not None:
                raise ConfigurationError(f"{option} without SITE= given twice: {value!r}")
            default = value.strip()
        elif site.strip() not in sites:
            raise ConfigurationError(f"{option} {value!r}: {site.strip()!r} is not in --sites")
        else:
            out[site.strip()] = item.strip()
    if default is not None:
        out = {site: out.get(site, default) for site in sites}
    return out


def _numbers(values: Multi, sites: list[str], option: str) -> dict[str, float]:
    from biofed.core import ConfigurationError

    out: dict[str, float] = {}
    for site, text in _per_site(values, sites, option).items():
        try:
            out[site] = float(text)
        except ValueError:
            raise ConfigurationError(
                f"{option} for {site!r} must be a number, got {text!r}"
            ) from None
    return out


def _party(folder: Path, name: str, role: str, ca_pem: bytes) -> "tuple[Party, str]":
    """The party in kit folder ``folder/name`` (kit.toml and cert.pem), and its consortium."""
    from biofed.core import ConfigurationError, PolicyViolation
    from biofed.governance import Party
    from biofed.identity import identify_peer

    kit_dir = folder / name
    try:
        config = tomllib.loads((kit_dir / "kit.toml").read_text(encoding="utf-8"))
        cert_pem = (kit_dir / "cert.pem").read_bytes()
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"no kit for {name!r} in {kit_dir} ({exc.filename} missing)"
        ) from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{kit_dir / 'kit.toml'} is not readable TOML: {exc}") from exc
    if (config.get("name"), config.get("role")) != (name, role):
        raise ConfigurationError(
            f"{kit_dir / 'kit.toml'} is {config.get('role')} {config.get('name')!r}, "
            f"expected {role} {name!r}"
        )
    try:
        peer = identify_peer(cert_pem, ca_pem)
    except PolicyViolation as exc:
        raise ConfigurationError(f"{kit_dir / 'cert.pem'}: {exc}") from exc
    if (peer.name, peer.role) != (name, role):
        raise ConfigurationError(f"{kit_dir / 'cert.pem'} is {peer.role} {peer.name!r}'s")
    return Party(name=name, role=role, fingerprint=peer.fingerprint), peer.consortium


def _slug(title: str) -> str:
    from biofed.core import ConfigurationError

    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:64].strip("-")
    if not slug:
        raise ConfigurationError(f"cannot make an id from title {title!r}: pass --id")
    return slug


@app.command("draft")
def draft_command(
    out: Annotated[Path, typer.Option("--out", help="The agreement file to write.")],
    title: Annotated[str, typer.Option(help="Title of the study.")],
    consortium_dir: ConsortiumDir,
    sites: Annotated[str, typer.Option(help="Comma-separated site names: a,b.")],
    expires: Annotated[str, typer.Option(help="Last day in force, YYYY-MM-DD (UTC).")],
    legal_basis: Annotated[str, typer.Option(help="Legal basis of the processing (text).")],
    purpose: Annotated[str, typer.Option(help="Purpose of the study (text).")],
    researchers: Annotated[str | None, typer.Option(help="Comma-separated names.")] = None,
    admins: Annotated[str | None, typer.Option(help="Comma-separated admin names.")] = None,
    coordinator: Annotated[str, typer.Option(help="The coordinator's kit name.")] = "coordinator",
    dataset: Annotated[
        Multi, typer.Option(help="NAME for every site, or SITE=NAME (repeatable).")
    ] = None,
    bundle: Annotated[Multi, typer.Option(help="Approved bundle SHA-256 (repeatable).")] = None,
    metric: Annotated[
        Multi, typer.Option(help="Aggregate metric allowed out (repeatable).")
    ] = None,
    final_model: Annotated[bool, typer.Option(help="May the final model leave?")] = True,
    per_site_metrics: Annotated[bool, typer.Option(help="May per-site metrics leave?")] = False,
    secure_aggregation: Annotated[bool, typer.Option(help="Require secure aggregation.")] = False,
    dp: Annotated[bool, typer.Option("--dp", help="Require differential privacy.")] = False,
    max_epsilon: Annotated[Multi, typer.Option(help="ε ceiling, or SITE=ε (repeatable).")] = None,
    max_delta: Annotated[Multi, typer.Option(help="δ ceiling, or SITE=δ (repeatable).")] = None,
    exact_guarantees: Annotated[
        bool,
        typer.Option(
            help="Require every ε to be a guarantee (default); --no-exact-guarantees lets "
            "tasks without a per-record bound run, their figures labelled heuristic."
        ),
    ] = True,
    min_cohort: Annotated[int, typer.Option(help="Minimum cohort size at a site.")] = 10,
    allow_query: Annotated[
        Multi,
        typer.Option(
            help="A federated query kind the sites answer: count, describe, km, cox… "
            "(repeatable or comma-separated; [analytics] allowed)."
        ),
    ] = None,
    query_rule: Annotated[
        Multi,
        typer.Option(
            metavar="KEY=VALUE",
            help="A disclosure threshold for the study's queries: min_cell=10, dominance=0.5, "
            "min_at_risk, min_difference, min_sites, records_per_parameter (repeatable).",
        ),
    ] = None,
    incentive: Annotated[
        Multi,
        typer.Option(
            metavar="KEY=VALUE",
            help="The study's incentive policy ([incentives]): measure=shapley (required), "
            "reward=proportional|equal, min_share=0.05, below_min=full|delayed|earlier_round|"
            "none, delay_days, earlier_rounds, free_rider_share (repeatable).",
        ),
    ] = None,
    agreement_id: Annotated[str | None, typer.Option("--id", help="Agreement id.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out file.")] = False,
    format: FormatOption = Format.table,
) -> None:
    """Draft an unsigned agreement from the kits in the consortium folder."""
    from biofed.core import ConfigurationError
    from biofed.governance import (
        OutputPolicy,
        PrivacyRequirements,
        SignedAgreement,
        StudyAgreement,
        write_agreement,
    )

    with _errors():
        site_names = _names(sites, "--sites")
        ca_pem = (consortium_dir / "ca" / "ca.pem").read_bytes()
        members = [(n, "site") for n in site_names]
        members += [(n, "researcher") for n in _names(researchers, "--researchers")]
        members += [(n, "admin") for n in _names(admins, "--admins")]
        parties = [_party(consortium_dir, n, role, ca_pem) for n, role in members]
        coord, consortium = _party(consortium_dir, coordinator, "coordinator", ca_pem)
        if (max_epsilon or max_delta) and not dp:
            raise ConfigurationError("--max-epsilon and --max-delta need --dp")
        if dp and not (max_epsilon and max_delta):
            raise ConfigurationError("--dp needs --max-epsilon and --max-delta")
        agreement = StudyAgreement(
            agreement_id=agreement_id or _slug(title),
            title=title,
            purpose=purpose,
            legal_basis=legal_basis,
            consortium=consortium,
            coordinator=coord,
            parties=tuple(p for p, _ in parties),
            datasets=_per_site(dataset, site_names, "--dataset"),
            approved_bundles=tuple(bundle or ()),
            outputs=OutputPolicy(
                final_model=final_model,
                metrics=tuple(metric or ()),
                per_site_metrics=per_site_metrics,
            ),
            privacy=PrivacyRequirements(
                secure_aggregation_required=secure_aggregation,
                dp_required=dp,
                max_epsilon=_numbers(max_epsilon, site_names, "--max-epsilon"),
                max_delta=_numbers(max_delta, site_names, "--max-delta"),
                exact_guarantees_required=exact_guarantees,
            ),
            min_cohort=min_cohort,
            analytics=_analytics(allow_query, query_rule),
            incentives=_incentives(incentive),
            expires=expires,  # type: ignore[arg-type]  # parsed and checked by StudyAgreement
        )
        write_agreement(out, SignedAgreement(agreement=agreement), overwrite=force)
    names = ", ".join(p.name for p in agreement.signers)
    emit(
        format,
        {
            "agreement_id": agreement.agreement_id,
            "path": str(out),
            "digest": agreement.digest(),
            "signers": [p.name for p in agreement.signers],
        },
        f"drafted [bold]{escape(agreement.agreement_id)}[/] in {escape(str(out))}; "
        f"to be signed by {escape(names)}",
    )


def _analytics(kinds: Multi, rules: Multi) -> "AnalyticsPolicy":
    """The ``[analytics]`` table of ``--allow-query`` and ``--query-rule`` flags; kinds are
    checked against the query kinds this biofed knows, thresholds by the policy."""
    from biofed.analytics import query_kinds
    from biofed.core import ConfigurationError
    from biofed.governance import AnalyticsPolicy

    known = query_kinds()
    allowed = [k.strip() for text in kinds or () for k in text.split(",") if k.strip()]
    for kind in allowed:
        if kind not in known:
            raise ConfigurationError(
                f"--allow-query {kind!r} is not a query kind; known: {', '.join(known)}"
            )
    values: dict[str, float] = {}
    for item in rules or ():
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigurationError(f"--query-rule must look like KEY=VALUE, got {item!r}")
        if key in values:
            raise ConfigurationError(f"--query-rule {key} is given twice")
        try:
            number = float(text)
        except ValueError:
            raise ConfigurationError(f"--query-rule {key} must be a number, got {text!r}") from None
        values[key] = int(number) if number.is_integer() and key != "dominance" else number
    if values and not allowed:
        raise ConfigurationError("--query-rule needs --allow-query (the kinds it governs)")
    return AnalyticsPolicy(allowed=tuple(dict.fromkeys(allowed)), rules=values)


def _incentives(items: Multi) -> "IncentivePolicy | None":
    """The ``[incentives]`` table of ``--incentive KEY=VALUE`` flags (None without any);
    whole numbers are integers, other numbers floats, the rest text; the policy checks them."""
    from biofed.core import ConfigurationError
    from biofed.governance import IncentivePolicy

    if not items:
        return None
    values: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise ConfigurationError(f"--incentive must look like KEY=VALUE, got {item!r}")
        if key in values:
            raise ConfigurationError(f"--incentive {key} is given twice")
        value: object = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        values[key] = value
    return IncentivePolicy.from_mapping(values)


@app.command("sign")
def sign_command(
    file: Annotated[Path, typer.Argument(help="The agreement file; signed in place.")],
    kit: Annotated[Path, typer.Option("--kit", help="Your participant kit folder.")],
    format: FormatOption = Format.table,
) -> None:
    """Sign the agreement with your kit's key (the file is replaced atomically)."""
    from biofed.governance import read_agreement, sign, write_agreement
    from biofed.identity import load_kit

    with _errors():
        signed = sign(read_agreement(file), load_kit(kit))
        write_agreement(file, signed)
        kit_audit(kit)(
            "agreement.signed",
            {"agreement_id": signed.agreement.agreement_id, "digest": signed.agreement.digest()},
        )
    me = load_kit(kit).name
    todo = [p.name for p in signed.agreement.signers if p.name not in signed.signatures]
    emit(
        format,
        {
            "agreement_id": signed.agreement.agreement_id,
            "digest": signed.agreement.digest(),
            "signed_by": me,
            "still_to_sign": todo,
        },
        f"[green]signed[/] {escape(signed.agreement.agreement_id)} as {escape(me)}; "
        + (f"still to sign: {escape(', '.join(todo))}" if todo else "every party has signed"),
    )


@app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="The agreement file.")],
    consortium_dir: ConsortiumDir,
    output: FormatOption = Format.table,
) -> None:
    """Check every signature and the expiry; exit 0 if in force, 1 if not."""
    from biofed.governance import read_agreement, verify

    with _errors():
        signed = read_agreement(file)
        ca_dir = consortium_dir / "ca"
        ca_pem = (ca_dir / "ca.pem").read_bytes()
        crl_pem = (ca_dir / "crl.pem").read_bytes() if (ca_dir / "crl.pem").is_file() else None
        certificates: dict[str, bytes] = {}
        for name in {p.name for p in signed.agreement.signers} | set(signed.signatures):
            cert = consortium_dir / name / "cert.pem"
            if cert.is_file():
                certificates[name] = cert.read_bytes()
        status = verify(signed, certificates, ca_pem, crl_pem=crl_pem)
    data = {
        "agreement_id": status.agreement_id,
        "digest": status.digest,
        "in_force": status.in_force,
        "reasons": list(status.reasons),
        "signed_by": list(status.signed_by),
        "missing": list(status.missing),
    }
    if status.in_force:
        lines = [
            f"[bold green]in force[/]: {escape(status.agreement_id)} signed by "
            f"{escape(', '.join(status.signed_by))}; expires {signed.agreement.expires}"
        ]
    else:
        lines = [f"[bold red]not in force[/]: {escape(status.agreement_id)}"]
        lines += [f"  - {escape(reason)}" for reason in status.reasons]
    emit(output, data, *lines)
    if not status.in_force:
        raise typer.Exit(code=1)


def _show_data(signed: "SignedAgreement") -> dict[str, object]:
    data = signed.agreement.to_data()
    data["expires"] = signed.agreement.expires.isoformat()
    data["digest"] = signed.agreement.digest()
    data["signatures"] = {
        name: {
            "fingerprint": s.fingerprint,
            "digest": s.digest,
            "signed_at": s.signed_at.isoformat(),
        }
        for name, s in signed.signatures.items()
    }
    return data


@app.command("show")
def show_command(
    file: Annotated[Path, typer.Argument(help="The agreement file.")],
    output: FormatOption = Format.table,
) -> None:
    """Print a readable summary (signatures are listed, not verified: use verify)."""
    from biofed.governance import read_agreement

    with _errors():
        signed = read_agreement(file)
    emit(output, _show_data(signed), *show_view(signed))


def show_view(signed: "SignedAgreement") -> list[RenderableType]:
    """What ``agreement show`` prints: terms, outputs, privacy, then one row per party."""
    a = signed.agreement
    shown: list[RenderableType] = []
    shown.append(f"[bold]{escape(a.title)}[/] ({escape(a.agreement_id)}, {escape(a.consortium)})")
    shown.append(f"purpose: {escape(a.purpose)}\nlegal basis: {escape(a.legal_basis)}")
    shown.append(f"expires: {a.expires} · minimum cohort: {a.min_cohort} · digest: {a.digest()}")
    out = a.outputs
    shown.append(
        f"outputs: final model {'yes' if out.final_model else 'no'} · metrics "
        f"{escape(', '.join(out.metrics) or 'none')} · per-site metrics "
        f"{'yes' if out.per_site_metrics else 'no'}"
    )
    pv = a.privacy
    shown.append(
        "privacy: secure aggregation "
        f"{'required' if pv.secure_aggregation_required else 'optional'} · DP "
        f"{'required' if pv.dp_required else 'optional'} · ε figures "
        + (
            "must be guarantees"
            if pv.exact_guarantees_required
            else "[yellow]may be heuristic (exact guarantees not required)[/]"
        )
    )
    shown.append(f"approved bundles: {escape(', '.join(a.approved_bundles) or 'none')}")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("party", "role", "dataset", "max ε", "max δ", "fingerprint", "signature"):
        table.add_column(column)
    for p in a.signers:
        sig = signed.signatures.get(p.name)
        table.add_row(
            escape(p.name),
            p.role,
            escape(a.datasets.get(p.name, "")),
            f"{pv.max_epsilon[p.name]:g}" if p.name in pv.max_epsilon else "",
            f"{pv.max_delta[p.name]:g}" if p.name in pv.max_delta else "",
            p.fingerprint,
            f"{sig.signed_at:%Y-%m-%d %H:%M}Z (unverified)" if sig else "[yellow]missing[/]",
        )
    for name in sorted(set(signed.signatures) - {p.name for p in a.signers}):
        table.add_row(escape(name), "[red]not a party[/]", "", "", "", "", "present")
    shown.append(table)
    return shown
