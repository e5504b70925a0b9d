# Copyright 2026 runner-planner contributors
# See LICENSE file for licensing details.

"""Code shared by the webhook-gateway and planner charms, as one package (``charms/common``).

Each charm's ``charmcraft.yaml`` packs it into the charm's ``lib/`` (the ``runner-common``
part); ``charms/test.sh`` installs it in editable mode for the charms' unit tests.

``charm`` holds the base class both charms derive from. Charmhub libraries cannot be fetched in
this project's build environment, so the small parts of the Juju interfaces the charms need
(``rabbitmq``, ``ingress``, ``prometheus_scrape``, ``grafana_dashboard``, ``loki_push_api``) are
implemented here, clearly and minimally. Tracing uses the ``charmlibs-interfaces-tracing``
package and dashboards/rules use ``cosl``.
"""
