# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Code shared by the webhook-gateway and planner charms.

The canonical copy lives in ``charms/common/runner_common``; ``charms/sync-common.sh`` copies it
into each charm's ``lib/`` directory (charmcraft puts ``lib/`` on the charm's ``PYTHONPATH``).
``charms/test.sh`` fails when the copies differ from the canonical source.

Charmhub libraries cannot be fetched in this project's build environment, so the small parts
of the Juju interfaces the charms need (``rabbitmq``, ``ingress``, ``prometheus_scrape``,
``grafana_dashboard``, ``loki_push_api``) are implemented here, clearly and minimally. Tracing
uses the ``charmlibs-interfaces-tracing`` package and dashboards/rules use ``cosl``.
"""
