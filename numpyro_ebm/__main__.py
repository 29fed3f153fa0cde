import sys

from numpyro_ebm.cli import main

sys.exit(main())
