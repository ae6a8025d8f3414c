import StockadeCore
print("stockade-fuzz: no targets yet")
