#!/bin/sh
# Tells dom0 that this template has cloudstore installed: qubes.PostInstall runs every
# executable /etc/qubes/post-install.d/*.sh after package changes, and dom0 records the
# request as the feature supported-feature.cloudstore=1 on the template
# (QubesOS/qubes-core-admin doc/qubes-features.rst, "Announcing supported features";
# examples in QubesOS/qubes-core-agent-linux qubes-rpc/post-install.d/).
# When the package is removed this file goes with it and dom0 drops the feature.
# cloudstore is not a qvm-service (its units are gated on the qubesdb role, not on
# /run/qubes-service/), hence supported-feature rather than supported-service.
qvm-features-request supported-feature.cloudstore=1
