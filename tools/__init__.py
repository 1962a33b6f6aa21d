"""Development tools that are not part of the biofed package (lint-imports contracts)."""
