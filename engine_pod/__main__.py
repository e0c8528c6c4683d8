"""`python -m engine_pod`: flags → config → the API server, which starts the engine process."""

from __future__ import annotations

import logging

import uvicorn

from engine_pod.api.server import create_app
from engine_pod.config import config_from_args


def main(argv: list[str] | None = None) -> None:
    config = config_from_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s [api] %(name)s: %(message)s",
    )
    logging.getLogger("rlfleet.api").info("starting engine pod: %s", config.to_dict())
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level="warning" if config.log_level == "info" else config.log_level,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
