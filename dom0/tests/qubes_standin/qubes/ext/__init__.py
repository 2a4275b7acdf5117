"""Stand-in for qubes-core-admin qubes/ext/__init__.py: the Extension base class
(a singleton that hooks its handler methods into the VM class's handlers at
first instantiation), the handler decorator and get_extensions (entry point
group ``qubes.ext``)."""

import importlib.metadata

import qubes
import qubes.events


class Extension:
    """Base class for all extensions."""

    def __new__(cls):
        if "_instance" not in cls.__dict__:
            cls._instance = super(Extension, cls).__new__(cls)
            for name in cls.__dict__:
                attr = getattr(cls._instance, name)
                if not qubes.events.ishandler(attr):
                    continue
                if attr.ha_vm is not None:
                    for event in attr.ha_events:
                        attr.ha_vm.__handlers__[event].add(attr)
                else:
                    for event in attr.ha_events:
                        qubes.Qubes.__handlers__[event].add(attr)
        return cls._instance


def get_extensions():
    """Instantiate every extension registered in the ``qubes.ext`` group."""
    return set(ext.load()() for ext in importlib.metadata.entry_points(group="qubes.ext"))


def handler(*events, **kwargs):
    """Event handler decorator factory (upstream signature and attributes)."""

    def decorator(func):
        import qubes.vm  # pylint: disable=import-outside-toplevel

        func.ha_events = events
        if kwargs.get("system", False):
            func.ha_vm = None
        elif "vm" in kwargs:
            func.ha_vm = kwargs["vm"]
        else:
            func.ha_vm = qubes.vm.BaseVM
        return func

    return decorator
