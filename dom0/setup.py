"""cloudstore-dom0: the dom0 side of cloudstore (core-admin extension, cloudstore-admin)."""

import setuptools

setuptools.setup(
    name="cloudstore-dom0",
    version="0.1.0",
    description="cloudstore for Qubes OS dom0: qubesdb export of cloudstore.* features, "
    "qrexec policy writer and setup check",
    license="GPL-3.0-or-later",
    packages=["cloudstore_dom0"],
    python_requires=">=3.8",
    entry_points={
        # qubesd loads every entry point in this group at start
        # (QubesOS/qubes-core-admin qubes/ext/__init__.py get_extensions).
        "qubes.ext": [
            "cloudstore_dom0 = cloudstore_dom0.extension:CloudstoreExtension",
        ],
        "console_scripts": [
            "cloudstore-admin = cloudstore_dom0.admin:main",
        ],
    },
)
