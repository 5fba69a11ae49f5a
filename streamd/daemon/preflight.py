"""What a host must offer a config before the daemon starts on it (`streamd run` checks it first, `streamd check`
reports it): a state directory the cameras that collect can write, and recording folders this process, and the
sandbox of the systemd unit that runs it, let it write."""
from __future__ import annotations

from pathlib import Path

from streamd import config as cfgmod
from streamd.daemon.collect import default_state_dir
from streamd.daemon.recording import folder_problem
from streamd.daemon.systemd import writable_paths


def state_problem(cfg: cfgmod.Config, cameras: tuple[cfgmod.CameraConfig, ...]) -> str | None:
    """Why the state directory cannot take the day frames of the cameras that collect them, or None (no
    camera collects: nothing is written there)."""
    if not any(c.collect for c in cameras):
        return None
    folder = Path(cfg.adapt.state_dir) if cfg.adapt.state_dir else default_state_dir()
    problem = folder_problem(folder.absolute())
    if problem is None:
        return None
    unset = "" if cfg.adapt.state_dir else f" (not set: {folder})"
    return (f"adapt.state_dir{unset}: {problem}; give a folder this user can write, or collect = false to the "
            "cameras")


INSTALLED_UNIT = Path("/etc/systemd/system/streamd@.service")


def unit_texts(unit: Path, instance: str) -> list[str]:
    """A unit file and its drop-ins (for all instances, then for this one), in the order systemd reads them."""
    texts = [unit.read_text()]
    for folder in (unit.with_name(unit.name + ".d"), unit.with_name(unit.name.replace("@.", f"@{instance}.") + ".d")):
        texts += [conf.read_text() for conf in sorted(folder.glob("*.conf"))]
    return texts


def recording_problems(cfg: cfgmod.Config, instance: str, unit: Path | None) -> list[str]:
    """Recording folders this process could not write, or the sandbox of `unit`'s instance `instance` would
    not let the service write (streamd@INSTANCE runs /etc/streamd/INSTANCE.toml; streamd-shard@I runs
    fleet.toml)."""
    sandbox = writable_paths(unit_texts(unit, instance), instance) if unit else None
    service = unit.name.replace("@.service", f"@{instance}") if unit else ""
    problems = []
    for i, c in enumerate(cfg.cameras):
        if not c.file_out:
            continue
        folder = Path(c.file_out).absolute()
        if sandbox is not None:
            managed, listed = sandbox
            if any(folder.is_relative_to(d) for d in managed):
                continue  # systemd creates these for the service, writable by its user, before it starts
            if not any(folder.is_relative_to(d) for d in listed):
                writable = ", ".join(str(d) for d in managed + listed)
                problems.append(f"camera[{i}].file_out: {folder} would not be writable by {service}: its unit "
                                f"{unit} has ProtectSystem=strict, which leaves only {writable} writable. Record "
                                f"into one of those, or allow the folder with `systemctl edit {service}`: "
                                f"[Service] ReadWritePaths={folder}")
                continue
        problem = folder_problem(folder / c.name)  # the camera's own folder, where the segments go
        if problem:
            problems.append(f"camera[{i}].file_out: {problem}")
    return problems
