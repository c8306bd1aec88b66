"""SIGHUP: the config read again and checked, and the models it names loaded; a config that
does not load is refused whole, a model that does not load keeps its stream's old one."""

from __future__ import annotations

import logging
from collections.abc import Callable

from amulet_stream.audio.devices import DeviceError
from amulet_stream.scoring.model import Model
from amulet_stream.scoring.model_meta import ModelError
from amulet_stream.service.config import Config, StreamConfig
from amulet_stream.service.config_keys import ConfigError
from amulet_stream.service.feeds import Stream
from amulet_stream.service.sinks import Sinks
from amulet_stream.service.startup import DaemonError, Models, check_sources

_LOGGER = logging.getLogger(__name__)
Plan = tuple[Config, dict[str, StreamConfig], dict[str, Model]]
"""The new config, its streams by id and their models."""


def reread(
    read: Callable[[], Config] | None,
    running: Config,
    streams: dict[str, Stream],
    models: Models,
    sinks: Sinks,
) -> Plan | None:
    """What a reload runs; None when it is refused (logged and counted) or leaves no stream."""
    try:
        cfg = read() if read is not None else running
    except (ConfigError, ValueError) as err:
        _LOGGER.error("reload refused: %s; going on with the running config", err)
        sinks.reloaded("refused")
        return None
    try:
        check_sources(cfg)
    except (DaemonError, DeviceError) as err:
        _LOGGER.error("reload refused: %s; going on with the running config", err)
        sinks.reloaded("refused")
        return None
    new = {s.id: s for s in cfg.all_streams()}
    loaded: dict[str, Model] = {}
    for sid, scfg in list(new.items()):
        try:
            loaded[sid] = models.get(scfg.model.path, scfg.model.threads)
        except ModelError as err:
            _LOGGER.error(
                "reload: stream %s: model refused, the old one keeps scoring: %s", sid, err
            )
            sinks.reloaded("refused")
            if sid in streams:
                new[sid] = streams[sid].cfg
                loaded[sid] = streams[sid].model
            else:
                del new[sid]
    return (cfg, new, loaded) if new else None
