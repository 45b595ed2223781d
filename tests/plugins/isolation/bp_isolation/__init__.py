"""Backends that take their process down, or change it, at import or in probe(): what
backplane's plugin isolation must survive (test fixture). Each module misbehaves when it is
imported; each backend is otherwise healthy, without a device."""

from backplane import API_VERSION
from backplane import Backend as _Base
from backplane import DeviceUnavailable


class Inert(_Base):
    """A healthy backend without a device."""

    api_version = API_VERSION

    def probe(self):
        raise DeviceUnavailable(f"{self.name} is a test fixture without a device")
