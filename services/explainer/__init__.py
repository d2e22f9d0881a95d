"""The explainer service: LIME explanations of the served models' answers.

LIME needs scikit-learn, which the inference service and the gateway must never load; so it runs
here, in its own process. Its batch predict function calls the inference service's
``predict-pixels`` endpoint, so the very onnxruntime sessions that serve predictions are explained.
"""
