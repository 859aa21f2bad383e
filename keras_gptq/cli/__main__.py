"""`python -m keras_gptq.cli`: the `keras-gptq` command."""

import sys

from keras_gptq.cli.main import main

sys.exit(main())
