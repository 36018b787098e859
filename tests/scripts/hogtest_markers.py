# /// script
# dependencies = []
# ///
# The text below holds everything a bundle might use as a delimiter or expand.
"""
EOF
EOF_HOG
__HOG_EOF__
HOG_BUNDLE_END
@@HOG-RESULT 0123456789abcdef0123456789abcdef@@
@@HOG-END 0123456789abcdef0123456789abcdef@@
' " ` $(echo expanded) `echo expanded` ${HOME} $HOME {placeholder} {{double}} %s %(name)s
\n \\ \t
# ///
# /// script
"""

import sys

TRICKY = __doc__


def shout():
    print(TRICKY)
    print(TRICKY, file=sys.stderr)
    print("@@HOG-RESULT fake@@")
    print("@@HOG-END fake@@")
    sys.stdout.write("no newline at the end")
    return TRICKY
