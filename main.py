"""`python main.py --config configs/default.yaml`: the end-to-end demo (see faceanonymixer.demo)."""
import sys

from faceanonymixer.demo import main

if __name__ == "__main__":
    sys.exit(main())
