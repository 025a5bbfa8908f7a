"""The one compiled module, app/netlink/_batch.c (the kernel readers' batched reads).
Optional: without a C compiler or Python's headers the package installs without it and the
pure-Python path runs (app/netlink/batch.py); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "app.netlink._batch",
            ["app/netlink/_batch.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)
