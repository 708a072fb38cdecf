# SPDX-License-Identifier: Apache-2.0
"""`python -m exporter`: the command line (`cli.main`)."""
from .cli import main
from .interrupt import leave

leave(main())
