"""faceanonymixer: cancelable faces by key-controlled StyleGAN2 latent mixing (FaceAnonyMixer, IJCB 2025).

Public API::

    from faceanonymixer import Key, Protector, load_config, get_recogniser

The names are resolved on first use (PEP 562), so that ``import faceanonymixer.images`` or ``.keys`` stays light
(no torch model code is imported for reading an image or a key file).
"""

__version__ = "0.1.0"

_API = {
    "Key": ("faceanonymixer.keys", "Key"),                              # a revocable key (keys.read_key_file loads one)
    "Protector": ("faceanonymixer.pipeline", "Protector"),              # the method: loads models once, protects people
    "ProtectConfig": ("faceanonymixer.pipeline", "ProtectConfig"),
    "load_config": ("faceanonymixer.workflow", "load_config"),          # YAML -> AppConfig(protect, workflow, demo)
    "get_recogniser": ("faceanonymixer.fr", "get_recogniser"),          # 'sface', 'dlib-resnet', 'faceplugin-fr', ...
    "FaceAnonyMixerError": ("faceanonymixer.errors", "FaceAnonyMixerError"),
}
__all__ = sorted(_API)


def __getattr__(name):
    if name in _API:
        import importlib
        module, attr = _API[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'faceanonymixer' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
