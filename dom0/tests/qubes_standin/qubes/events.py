"""Stand-in for qubes-core-admin qubes/events.py: handlers keyed by event
pattern per class, matched with fnmatch, called as ``func(subject, event,
**kwargs)``; post-events run base classes first, pre-events the instance first;
nothing fires while ``events_enabled`` is False (as while qubes.xml loads)."""

import collections
import fnmatch
import itertools


def ishandler(obj):
    """Test if a method is hooked to an event (same test as upstream)."""
    return callable(obj) and hasattr(obj, "ha_events")


class EmitterMeta(type):
    """Gives every class its own ``__handlers__`` (upstream EmitterMeta)."""

    def __init__(cls, name, bases, dict_):
        super().__init__(name, bases, dict_)
        cls.__handlers__ = collections.defaultdict(set)


class Emitter(metaclass=EmitterMeta):
    """Subject that can emit events."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not hasattr(self, "events_enabled"):
            self.events_enabled = False
        self.__handlers__ = collections.defaultdict(set)

    def _fire_event(self, event, kwargs, pre_event=False):
        if not self.events_enabled:
            return []
        order = itertools.chain((self,), self.__class__.__mro__)
        if not pre_event:
            order = reversed(list(order))
        effects = []
        for i in order:
            try:
                handlers_dict = i.__handlers__
            except AttributeError:
                continue
            handlers = [
                h_func
                for h_name, h_func_set in handlers_dict.items()
                for h_func in h_func_set
                if fnmatch.fnmatch(event, h_name)
            ]
            for func in sorted(handlers, key=lambda h: hasattr(h, "ha_bound"), reverse=True):
                effect = func(self, event, **kwargs)
                if effect is not None:
                    effects.extend(effect)
        return effects

    def fire_event(self, event, pre_event=False, **kwargs):
        """Call all handlers for an event; upstream signature."""
        return self._fire_event(event, kwargs, pre_event=pre_event)
