import sys

from sdvar_lib.bench.bench import main

sys.exit(main())
