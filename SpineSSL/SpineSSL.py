"""SpineSSL: 3D Slicer scripted module.

Thin GUI over ``SpineSSLLib`` (the backend, importable without Slicer).  Four classes as in
Slicer's scripted-module template: Module, Widget, Logic, Test.
"""

import logging

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class SpineSSL(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SpineSSL"
        self.parent.categories = ["Quantification"]
        self.parent.dependencies = []
        self.parent.contributors = ["SpineSSL contributors"]
        self.parent.helpText = (
            "Vertebra levels, vertebral-body / disc volume extraction, longitudinal comparison and "
            "disc-degeneration grading for sagittal T2 lumbar MRI. "
            "See the <a href='https://github.com/spinessl/SlicerSpineSSL'>documentation</a>."
        )
        self.parent.acknowledgementText = (
            "Method: A. Jamaludin, T. Kadir, A. Zisserman, 'Self-supervised learning for spinal MRIs', "
            "MICCAI DLMIA 2017. Acquisition parameters and grade frequencies of the synthetic cohort "
            "come from the SPIDER dataset (van der Graaf et al., Sci Data 2024, CC-BY 4.0)."
        )


class SpineSSLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SpineSSL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SpineSSLLogic()

    def cleanup(self):
        self.removeObservers()


class SpineSSLLogic(ScriptedLoadableModuleLogic):
    """Wires the MRML scene to SpineSSLLib; usable without the widget (batch mode)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)

    @staticmethod
    def backendVersion():
        import SpineSSLLib

        return SpineSSLLib.__version__


class SpineSSLTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_backend_importable()

    def test_backend_importable(self):
        self.delayDisplay("Checking the SpineSSLLib backend")
        version = SpineSSLLogic.backendVersion()
        self.assertTrue(version)
        logging.info("SpineSSLLib %s", version)
        self.delayDisplay("Test passed")
