"""Helpers of the SpineSSL Slicer module (``SpineSSL.py`` holds the Module, Widget and Test classes):

  ``logic``         ``SpineSSLLogic`` and ``SpineSSLParameterNode``
  ``jobs``          the ``spine-ssl`` command line in a background process (start, read, stop the tree)
  ``dependencies``  the Python packages the module needs, and a safe way to install them

They are a package, not ``.py`` files beside ``SpineSSL.py``, because Slicer loads every ``.py``
file directly in a scripted-module folder as a module of its own.  Slicer's developer-mode
*Reload* re-reads ``SpineSSL.py`` only: restart Slicer after editing these files.
"""
