"""The explainer service: explanations (occlusion, LIME) of the served models' answers.

LIME needs scikit-learn, which the inference service and the gateway must never load; so explanations run
here, in their own process. The copies with regions hidden are made and classified by the inference service's
``predict-masked`` endpoint, so the very onnxruntime sessions that serve predictions are explained.
"""
